"""Megatron's pickled extras as inert placeholders: recorded, never imported, built or called.

These pickles are written opcode by opcode (no Megatron needed): what Megatron's ``args`` hold,
and what a hostile file might try with the same globals.
"""

from __future__ import annotations

import os
import sys

import pytest

from app.engine.errors import UnreadableCheckpointError, UnsafeCheckpointError
from app.engine.readers.megatron_layout import INERT_GLOBALS, Inert, partition, read_args
from app.engine.readers.unpickler import load_restricted
from tests.fixtures import reduce_pickle


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _namespace(state: bytes) -> bytes:
    """``argparse.Namespace`` as protocol 2 pickles it: NEWOBJ, then BUILD with its dict."""
    return _global("argparse", "Namespace") + b")\x81" + state + b"b"


def test_args_become_a_placeholder_whose_numbers_are_read() -> None:
    signal = _global("signal", "Signals") + b"K\x0f\x85R"  # Signals(15)
    enum = _global("megatron.core.transformer.enums", "AttnBackend") + b"K\x05\x85R"
    state = (
        b"}("
        + b"X\x1a\x00\x00\x00tensor_model_parallel_sizeK\x02"
        + b"X\x1c\x00\x00\x00pipeline_model_parallel_sizeK\x04"
        + b"X\x06\x00\x00\x00swiglu\x88"
        + b"X\x0b\x00\x00\x00exit_signal"
        + signal
        + b"X\x11\x00\x00\x00attention_backend"
        + enum
        + b"u"
    )
    data = b"\x80\x02}X\x04\x00\x00\x00args" + _namespace(state) + b"s."
    root = load_restricted(data, extra=INERT_GLOBALS)
    args = root["args"]
    assert isinstance(args, Inert) and args.cls == "argparse.Namespace" and args.args == ()
    assert (args.state["exit_signal"].cls, args.state["exit_signal"].args) == (
        "signal.Signals",
        (15,),
    )
    assert args.state["attention_backend"].cls == "megatron.core.transformer.enums.AttnBackend"
    numbers = read_args(root, "rank 0")
    assert (numbers.tensor_parallel, numbers.pipeline_parallel, numbers.gated) == (2, 4, True)
    assert not any(m == "megatron" or m.startswith("megatron.") for m in sys.modules)


def test_a_megatron_function_in_the_pickle_is_recorded_not_called() -> None:
    data = b"\x80\x02" + _global("megatron.training.checkpointing", "save_checkpoint")
    data += b"X\x04\x00\x00\x00evil\x85R."
    found = load_restricted(data, extra=INERT_GLOBALS)
    assert isinstance(found, Inert)
    assert (found.cls, found.args) == ("megatron.training.checkpointing.save_checkpoint", ("evil",))


def test_anything_else_is_still_refused() -> None:
    with pytest.raises(UnsafeCheckpointError, match=r"references '(posix|os)\.system'"):
        load_restricted(reduce_pickle(os.system, "true"), extra=INERT_GLOBALS)
    with pytest.raises(UnsafeCheckpointError, match=r"references 'builtins\.eval'"):
        load_restricted(b"\x80\x02" + _global("builtins", "eval") + b".", extra=INERT_GLOBALS)


def test_a_placeholder_cannot_be_rebuilt_or_given_two_states() -> None:
    build_on_class = b"\x80\x02" + _global("signal", "Signals") + b"}b."
    with pytest.raises(UnsafeCheckpointError, match=r"tries to modify signal\.Signals"):
        load_restricted(build_on_class, extra=INERT_GLOBALS)
    twice = b"\x80\x02" + _namespace(b"}") + b"}b."
    with pytest.raises(UnsafeCheckpointError, match="given a state twice"):
        load_restricted(twice, extra=INERT_GLOBALS)


def test_partition_dims_by_name() -> None:
    layer = "decoder.layers.0."
    assert partition(layer + "self_attention.linear_qkv.weight", gated=True) == "column"
    assert partition(layer + "mlp.linear_fc1.weight", gated=True) == "gated"
    assert partition(layer + "mlp.linear_fc1.weight", gated=False) == "column"
    assert partition(layer + "self_attention.linear_proj.weight", gated=True) == "row"
    assert partition(layer + "mlp.linear_fc2.bias", gated=True) == "replicated"
    assert partition(layer + "self_attention.linear_qkv.layer_norm_weight", True) == "replicated"
    assert partition("embedding.word_embeddings.weight", gated=True) == "vocab"
    with pytest.raises(UnreadableCheckpointError, match="does not know how Megatron splits"):
        partition(layer + "mlp.experts.weight1", gated=True)


def test_layers_are_renumbered_and_extra_state_left_out() -> None:
    from app.engine.readers.megatron import _stage_keys
    from app.engine.readers.unpickler import StorageRef, TensorRef

    ref = TensorRef(StorageRef("0", "uint8", 4), 0, (4,), (1,))
    model = {
        "decoder.layers.0.mlp.linear_fc1.weight": ref,
        "decoder.layers.1.mlp.linear_fc1._extra_state": ref,  # TE's FP8 metadata, a tensor
        "decoder.layers.1.mlp.linear_fc1.weight": ref,
        "decoder.final_layernorm.weight": ref,
        "decoder.layers.0.self_attention.linear_qkv._extra_state": None,
    }
    keys, layers, other = _stage_keys(model, 4)
    assert keys == {
        "decoder.layers.0.mlp.linear_fc1.weight": "decoder.layers.4.mlp.linear_fc1.weight",
        "decoder.layers.1.mlp.linear_fc1.weight": "decoder.layers.5.mlp.linear_fc1.weight",
        "decoder.final_layernorm.weight": "decoder.final_layernorm.weight",
    }
    assert layers == 2
    assert sorted(other) == [
        "decoder.layers.0.self_attention.linear_qkv._extra_state",
        "decoder.layers.1.mlp.linear_fc1._extra_state",
    ]
