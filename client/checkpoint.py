"""Checkpoints in safetensors format (which MindSpore 2.x also reads and writes): ``save_checkpoint``,
``load_checkpoint`` and ``load_param_into_net``, keyed by each Parameter's name. A Cell's checkpoint also holds the
state of every optimizer in it (an optimizer itself, or a TrainOneStepCell) under MindSpore's names
(``global_step``, ``moment1.<parameter>``...), and loading into such a Cell restores it, so training resumes
exactly where it stopped."""
from __future__ import annotations

import os
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from .cell import Cell
from .nn.optim import Optimizer
from .parameter import Parameter
from .tensor import Tensor


def _arrays(save_obj: Any) -> dict[str, np.ndarray]:
    """name -> array for a Cell (its parameters by name), a dict of Tensors, a list of Parameters (by their names) or
    a list of {'name', 'data'} dicts, as MindSpore's ``save_checkpoint`` takes."""
    if isinstance(save_obj, Cell):
        pairs: list[tuple[Any, Any]] = [(p.name, p) for p in save_obj.get_parameters()]
        pairs += [pair for opt in _optimizers(save_obj) for pair in opt.state_arrays().items()]
    elif isinstance(save_obj, dict):
        pairs = list(save_obj.items())
    elif isinstance(save_obj, (list, tuple)):
        pairs = []
        for i, d in enumerate(save_obj):
            if isinstance(d, Parameter):  # ``net.trainable_params()``, a ParameterTuple
                pairs.append((d.name, d))
            elif isinstance(d, dict) and "name" in d and "data" in d:
                pairs.append((d["name"], d["data"]))
            else:
                keys = f" with keys {sorted(map(str, d))}" if isinstance(d, dict) else ""
                raise TypeError(f"save_checkpoint: a list must hold Parameters or dicts with 'name' and 'data'; "
                                f"item {i} is a {type(d).__name__}{keys}")
    else:
        raise TypeError(f"save_checkpoint: save_obj must be a Cell, a dict, a list of Parameters or a list of dicts, "
                        f"got {type(save_obj).__name__}")
    out: dict[str, np.ndarray] = {}
    for name, value in pairs:
        if not isinstance(name, str):
            raise TypeError(f"save_checkpoint: parameter names must be str, got {name!r}")
        if name in out:
            raise ValueError(f"save_checkpoint: two parameters are named {name!r}")
        out[name] = np.ascontiguousarray(value.asnumpy() if isinstance(value, Tensor) else np.asarray(value))
    return out


def _optimizers(net: Cell) -> list[Optimizer]:
    """The optimizers among ``net`` and its descendants."""
    return [cell for _, cell in net.cells_and_names() if isinstance(cell, Optimizer)]


def save_checkpoint(save_obj: Any, ckpt_file_name: str | os.PathLike[str], integrated_save: bool = True,
                    async_save: bool = False, append_dict: dict[str, Any] | None = None, enc_key: bytes | None = None,
                    enc_mode: str = "AES-GCM", choice_func: Any = None, crc_check: bool = False,
                    format: str = "safetensors") -> None:
    """Write the parameters of ``save_obj`` (plus ``append_dict``'s numbers and Tensors) to a safetensors file, in
    MindSpore's argument order. ``choice_func(name)`` keeps a parameter when true. ``integrated_save`` (merging model-
    parallel slices) has nothing to merge here, and ``async_save`` writes before returning; encryption and CRC checks
    are not supported."""
    if format != "safetensors":
        raise ValueError(f"save_checkpoint: only format='safetensors' is supported, got {format!r}")
    for name, flag in (("integrated_save", integrated_save), ("async_save", async_save), ("crc_check", crc_check)):
        if not isinstance(flag, bool):
            raise TypeError(f"save_checkpoint: {name} must be a bool, got {flag!r}")
    if enc_key is not None or crc_check:
        raise NotImplementedError(f"save_checkpoint: {'enc_key' if enc_key is not None else 'crc_check'} is not supported "
                                  f"(safetensors files carry no encryption or CRC)")
    arrays = _arrays(save_obj)
    if choice_func is not None:
        arrays = {name: arr for name, arr in arrays.items() if choice_func(name)}
    for name, value in (append_dict or {}).items():
        if name in arrays:
            raise ValueError(f"save_checkpoint: append_dict key {name!r} is also a parameter name")
        arrays[name] = np.ascontiguousarray(value.asnumpy() if isinstance(value, Tensor) else np.asarray(value))
    save_file(arrays, os.fspath(ckpt_file_name), metadata={"format": "gradserve"})


def load_checkpoint(ckpt_file_name: str | os.PathLike[str], net: Cell | None = None, strict_load: bool = False,
                    filter_prefix: str | tuple[str, ...] | None = None, format: str = "safetensors") -> dict[str, Parameter]:
    """The checkpoint's tensors as Parameters by name (loaded into ``net`` too when given); names starting with
    ``filter_prefix`` are skipped."""
    if format != "safetensors":
        raise ValueError(f"load_checkpoint: only format='safetensors' is supported, got {format!r}")
    prefixes = (filter_prefix,) if isinstance(filter_prefix, str) else tuple(filter_prefix or ())
    params = {
        name: Parameter(arr, name=name)
        for name, arr in load_file(os.fspath(ckpt_file_name)).items()
        if not name.startswith(prefixes)
    }
    if net is not None:
        load_param_into_net(net, params, strict_load)
    return params


def load_param_into_net(net: Cell, parameter_dict: dict[str, Any], strict_load: bool = False) -> tuple[list[str], list[str]]:
    """Set each of ``net``'s Parameters (and its optimizers' state) from ``parameter_dict`` by name; returns (the
    net's parameters not loaded, the dict's entries not used); an optimizer's state loads whole or not at all. A shape mismatch raises; ``strict_load`` also rejects a dtype mismatch."""
    if not isinstance(net, Cell):
        raise TypeError(f"load_param_into_net: net must be a Cell, got {type(net).__name__}")
    if not isinstance(parameter_dict, dict):
        raise TypeError(f"load_param_into_net: parameter_dict must be a dict, got {type(parameter_dict).__name__}")
    not_loaded: list[str] = []
    used: set[str] = set()
    for p in net.get_parameters():
        if p.name not in parameter_dict:
            not_loaded.append(p.name)
            continue
        value = parameter_dict[p.name]
        arr = value.asnumpy() if isinstance(value, Tensor) else np.asarray(value)
        if arr.shape != p.shape:
            raise ValueError(f"load_param_into_net: {p.name!r} has shape {p.shape} in the net but {arr.shape} in the checkpoint")
        if strict_load and arr.dtype != p._array_dtype():
            raise TypeError(f"load_param_into_net: {p.name!r} is {p.dtype} in the net but {arr.dtype} in the checkpoint")
        p.set_data(arr)
        used.add(p.name)
    optimizers = _optimizers(net)
    arrays = {k: v.asnumpy() if isinstance(v, Tensor) else np.asarray(v) for k, v in parameter_dict.items()} if optimizers else {}
    for opt in optimizers:
        missing, taken = opt.load_state(arrays)
        not_loaded += missing
        used.update(taken if not missing else ())
    return not_loaded, [k for k in parameter_dict if k not in used]
