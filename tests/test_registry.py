"""nas.registry: one key per (kind, name), precise lookup errors, and discovery through entry points."""

import importlib.metadata
import sys
from typing import Literal

import pytest
from pydantic import ValidationError
from torch import nn

from nas import BlockConfig, Capabilities, registry
from nas.registry import KINDS, Registry, RegistryError
from nas.spec import load_spec

BUILTINS = {
    "attention": {"softmax"},
    "position": {"none", "sinusoidal", "learned", "rope"},
    "norm": {"layernorm", "rmsnorm"},
    "ffn": {"mlp"},
    "task": {"mqar", "text", "digits"},
}


def _block(name: str) -> type:
    """A fresh attention class registrable as ``name``."""

    class Block(nn.Module):
        """A test block.

        Second paragraph, not part of the summary.
        """

        class Config(BlockConfig):
            type: Literal[name] = name  # type: ignore[valid-type]

    return Block


# --- registration -------------------------------------------------------------------------------------
def test_register_and_get():
    reg = Registry()
    cls = _block("alpha")
    assert reg.register("attention", "alpha")(cls) is cls
    entry = reg.get("attention", "alpha")
    assert (entry.kind, entry.name, entry.cls) == ("attention", "alpha", cls)
    assert entry.config is cls.Config
    assert entry.summary == "A test block."
    assert entry.capabilities == Capabilities()
    assert reg.names("attention") == ["alpha"]
    assert reg.names("ffn") == []


def test_duplicate_key_with_another_class_is_an_error():
    reg = Registry()
    first, second = _block("alpha"), _block("alpha")
    reg.register("attention", "alpha")(first)
    with pytest.raises(RegistryError, match="attention 'alpha' is already registered"):
        reg.register("attention", "alpha")(second)
    assert reg.get("attention", "alpha").cls is first  # not overwritten


def test_same_name_under_another_kind_is_a_different_key():
    reg = Registry()

    class Ffn(nn.Module):
        class Config(BlockConfig):
            type: Literal["alpha"] = "alpha"

    reg.register("attention", "alpha")(_block("alpha"))
    reg.register("ffn", "alpha")(Ffn)
    assert reg.get("ffn", "alpha").cls is Ffn


def test_registering_the_identical_class_again_is_a_no_op():
    reg = Registry()
    cls = _block("alpha")
    reg.register("attention", "alpha")(cls)
    before = reg.entries()
    assert reg.register("attention", "alpha")(cls) is cls
    assert reg.entries() == before


def test_duplicate_of_a_builtin_in_the_global_registry_names_its_provider():
    with registry.REGISTRY.scratch():
        with pytest.raises(RegistryError) as info:
            registry.register("attention", "softmax")(_block("softmax"))
    assert "already registered by nas" in str(info.value)
    assert registry.get("attention", "softmax").cls.__name__ == "SoftmaxAttention"


def test_scratch_removes_what_was_registered_inside_it():
    with registry.REGISTRY.scratch():
        registry.register("attention", "temporary_block")(_block("temporary_block"))
        assert "temporary_block" in registry.names("attention")
    assert "temporary_block" not in registry.names("attention")
    assert "softmax" in registry.names("attention")


def test_unknown_kind_is_rejected():
    with pytest.raises(RegistryError) as info:
        Registry().register("atention", "alpha")
    message = str(info.value)
    assert "unknown kind 'atention'" in message and "did you mean 'attention'?" in message
    assert all(kind in message for kind in KINDS)


@pytest.mark.parametrize("name", ["my-block", "2fast", "with space", ""])
def test_block_name_must_be_an_identifier(name):
    with pytest.raises(RegistryError, match="identifier"):
        Registry().register("attention", name)


def test_unknown_name_lists_registered_names_and_suggests():
    reg = Registry()
    for name in ("softmax", "linear"):
        reg.register("attention", name)(_block(name))
    with pytest.raises(RegistryError) as info:
        reg.get("attention", "sofmax")
    assert str(info.value) == "unknown attention 'sofmax'; did you mean 'softmax'? registered: linear, softmax"


def test_unknown_name_of_an_empty_kind():
    with pytest.raises(RegistryError, match=r"unknown ffn 'mlp' registered: \(none\)"):
        Registry().get("ffn", "mlp")


def test_config_without_literal_type_is_rejected():
    class Block(nn.Module):
        class Config(BlockConfig):
            type: str = "alpha"

    with pytest.raises(RegistryError, match=r'Config needs `type: Literal\["alpha"\] = "alpha"`'):
        Registry().register("attention", "alpha")(Block)


def test_config_literal_of_another_name_is_rejected():
    with pytest.raises(RegistryError, match="Literal"):
        Registry().register("attention", "beta")(_block("alpha"))


def test_class_without_config_is_rejected():
    class Block(nn.Module):
        pass

    with pytest.raises(RegistryError, match="needs a nested `Config` class"):
        Registry().register("attention", "alpha")(Block)


def test_config_not_derived_from_block_config_is_rejected():
    class Block(nn.Module):
        class Config:
            type = "alpha"

    with pytest.raises(RegistryError, match="nas.BlockConfig"):
        Registry().register("attention", "alpha")(Block)


def test_block_configs_are_strict_and_frozen():
    config_cls = registry.get("attention", "softmax").config
    with pytest.raises(ValidationError):
        config_cls(dropout=0.1, droput=0.2)  # extra="forbid"
    config = config_cls(dropout=0.1)
    with pytest.raises(ValidationError):
        config.dropout = 0.2  # frozen


@pytest.mark.parametrize("entry", registry.entries(), ids=lambda e: f"{e.kind}-{e.name}")
def test_every_registered_block_declares_a_strict_config(entry):
    assert entry.config.model_config.get("extra") == "forbid"
    assert entry.config.model_config.get("frozen") is True
    assert entry.config.model_fields["type"].default == entry.name
    assert entry.summary  # `nas plugins` shows it


# --- discovery --------------------------------------------------------------------------------------------
def test_builtins_are_registered_with_provider_nas():
    registry.load_plugins()
    version = importlib.metadata.version("nas-transformers")  # the distribution's name (import package: nas)
    for kind, names in BUILTINS.items():
        assert names <= set(registry.names(kind)), kind
        for name in names:
            entry = registry.get(kind, name)
            assert (entry.provider, entry.version) == ("nas-transformers", version), (kind, name)
            assert entry.cls.__module__.startswith("nas_plugins."), (kind, name)


def test_example_plugin_is_discovered_through_its_entry_point():
    """``examples/nas-example-plugin`` is pip-installed in the test environment; nothing imports it by hand."""
    registry.load_plugins()
    entry = registry.get("attention", "cosine")
    assert entry.provider == "nas-example-plugin"
    assert entry.version == importlib.metadata.version("nas-example-plugin")
    assert entry.cls.__module__ == "nas_example_plugin"
    assert entry.capabilities.positions == frozenset({"none", "embedding", "rotary"})


def test_load_plugins_is_idempotent():
    registry.load_plugins()
    before = registry.entries()
    registry.load_plugins()
    registry.load_plugins(["nas_plugins.attention"])
    assert registry.entries() == before


def test_load_plugins_wraps_import_errors():
    with pytest.raises(registry.PluginError, match="plugin module 'nas_no_such_module_xyz' failed to import"):
        registry.load_plugins(["nas_no_such_module_xyz"])


PLUGIN_MODULE = '''
from typing import Literal

import torch
from torch import nn

from nas import BlockConfig, Dims, register


@register("ffn", "{name}")
class DoubleFFN(nn.Module):
    """Multiplies by a constant; a local plugin for tests."""

    class Config(BlockConfig):
        type: Literal["{name}"] = "{name}"
        factor: float = 2.0

    def __init__(self, config: Config, dims: Dims):
        super().__init__()
        self.factor = config.factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.factor * x
'''


@pytest.fixture
def local_plugin(tmp_path, monkeypatch):
    """A plugin module in tmp_path registering ffn ``<module name>_ffn``; removed from the registry afterwards."""
    module = f"nas_local_plugin_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(PLUGIN_MODULE.replace("{name}", f"{module}_ffn"))
    monkeypatch.syspath_prepend(str(tmp_path))
    with registry.REGISTRY.scratch():
        yield module
    sys.modules.pop(module, None)


def test_plugins_list_in_a_space_imports_a_local_module(local_plugin, write_spec):
    block = f"{local_plugin}_ffn"
    assert block not in registry.names("ffn")
    path = write_spec(f"""\
        name: local
        plugins: [{local_plugin}]
        task: {{type: mqar, vocab_size: 32, seq_len: 16}}
        model: {{d_model: 32, n_heads: 2}}
        space:
          ffn:
            - type: {block}
              factor: [0.5, 3.0]
        """)
    loaded = load_spec(path, device="cpu")
    assert loaded.spec.space.ffn[0].type == block
    assert loaded.spec.space.ffn[0].factor == [0.5, 3.0]
    entry = registry.get("ffn", block)
    assert entry.provider == local_plugin and entry.version == "local"
    assert entry.summary == "Multiplies by a constant; a local plugin for tests."


def test_block_of_an_unlisted_local_module_is_unknown(local_plugin, write_spec):
    path = write_spec(f"""\
        task: {{type: mqar}}
        space:
          ffn: [{{type: {local_plugin}_ffn}}]
        """)
    from nas.spec import SpecError

    with pytest.raises(SpecError, match=f"unknown ffn '{local_plugin}_ffn'"):
        load_spec(path, device="cpu")


# --- defaults: how the core fills a kind without naming a block ------------------------------------------
def test_each_kind_has_one_default_from_the_builtins():
    registry.load_plugins()
    assert {k: registry.default(k) for k in KINDS} == {
        "attention": "softmax", "position": "rope", "norm": "layernorm", "ffn": "mlp", "compression": "none",
        "task": "mqar"}


def test_a_second_default_for_a_kind_is_an_error_naming_the_first():
    reg = Registry()
    reg.register("attention", "first", default=True)(_block("first"))
    with pytest.raises(RegistryError, match="cannot be the default attention: 'first' already is"):
        reg.register("attention", "second", default=True)(_block("second"))
    assert reg.names("attention") == ["first"]  # the refused class is not registered either
    assert reg.default("attention") == "first"


def test_a_kind_without_a_default_says_how_to_declare_one():
    reg = Registry()
    reg._loaded_entry_points = True  # a registry that discovers nothing
    with pytest.raises(RegistryError, match=r"no default norm block is registered .*default=True"):
        reg.default("norm")


def test_scratch_forgets_a_default_registered_inside_it():
    reg = Registry()
    reg._loaded_entry_points = True
    with reg.scratch():
        reg.register("ffn", "tmp", default=True)(_block("tmp"))
        assert reg.default("ffn") == "tmp"
    with pytest.raises(RegistryError):
        reg.default("ffn")


# --- capabilities: declared once per class, read in one place ----------------------------------------------
def test_a_tasks_capabilities_come_from_its_one_causal_declaration():
    registry.load_plugins()
    mqar, digits = registry.get("task", "mqar").capabilities, registry.get("task", "digits").capabilities
    assert (mqar.causal, mqar.bidirectional) == (True, False)
    assert (digits.causal, digits.bidirectional) == (False, True)
    assert mqar.describe("task") == {"needs_gpu": False, "causal": True}


def test_supports_is_the_one_direction_filter():
    both, encoder = Capabilities(), Capabilities(causal=False, bidirectional=True)
    assert both.directions() == [True, False] and encoder.directions() == [False]
    assert not encoder.supports(True) and encoder.supports(False)
