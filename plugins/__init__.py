"""Built-in blocks of `nas`, installed as the package ``nas_plugins``.

They register through the public ``nas.register`` decorator and are discovered through the ``nas.plugins``
entry-point group, exactly like a third-party plugin package (see ``examples/nas-example-plugin``).
"""
