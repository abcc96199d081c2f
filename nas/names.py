"""Names the whole tool agrees on, in a module that imports nothing: the ``nas`` command reads them to build its
help before it imports anything else (``nas --help`` stays a fraction of a second)."""

#: The closed set of block kinds of the registry.
KINDS = ("attention", "position", "norm", "ffn", "compression", "task")
#: The entry-point group plugins are found under.
ENTRY_POINT_GROUP = "nas.plugins"
#: The distribution whose entry points are the built-in blocks: they load first and their names are reserved.
CORE_DISTRIBUTION = "nas-transformers"
#: Set (to anything but "" or "0") to turn any plugin that fails to import into an error, for CI.
STRICT_ENV = "NAS_STRICT_PLUGINS"
