"""The emulation context manager: a precision policy's numerics, computed in FP32.

Inside ``with emulate(policy):`` every torch function call passes through one
``TorchFunctionMode``. Each FP32 tensor carries a *logical* format: a tensor that a GPU would
hold in the low-precision format is stored in FP32, holds values rounded to that format, and is
tagged with it (``logical_dtype(t)`` reads the tag). Per call:

* ops that torch's autocast runs in low precision (found by probing autocast, see
  ``probe.py``) get their floating inputs rounded to the format, run in FP32 (the FP32
  accumulation of a tensor core), and have their outputs rounded and tagged;
* every other op follows the dtype torch itself would give for the inputs' logical dtypes
  (autocast's FP32 and promote lists included, again by probing): a low output is rounded;
* gradients are rounded where a GPU holds them in the low format: the backward of an input
  rounding is a rounding (``x.to(half).float()``), and a tensor hook rounds the gradient of
  each rounded output.

Rounding happens in place on fresh outputs without bumping autograd's version counter, so
tensors saved for backward are the rounded ones, as on a GPU. Nothing synchronises with the
host, except that the first call of each function (and dtype pattern) is probed once.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from mixprec.emulate import fp8 as _fp8
from mixprec.emulate.probe import RULES, lowers, output_dtypes
from mixprec.emulate.rounding import grad_rounder, quantize, round_storage_
from mixprec.formats import FORMATS, FloatFormat, get_format
from mixprec.policy import PRESETS, Policy

__all__ = ["emulate", "is_emulating", "logical_dtype", "mark_storage"]

_TAG = "_mixprec_emulated_format"
_HALF_FORMATS = ("fp16", "bf16")
_FP8_FORMATS = ("fp8_e4m3", "fp8_e5m2")
EMULATED_FORMATS = (*_HALF_FORMATS, *_FP8_FORMATS)

# Functions that only read metadata or drive autograd: never emulated, never probed.
_META = frozenset({
    "size", "dim", "numel", "stride", "data_ptr", "is_contiguous", "is_floating_point",
    "is_complex", "__len__", "element_size", "storage_offset", "untyped_storage", "_is_view",
    "register_hook", "backward", "item", "tolist", "__bool__", "__int__", "__float__",
    "__index__", "__format__", "__repr__", "numpy", "get_device", "requires_grad_",
    "retain_grad", "__hash__", "__reduce_ex__", "__deepcopy__", "dim_order", "nelement",
    "ndimension", "has_names", "is_leaf", "is_set_to", "__setstate__", "__dlpack__",
    "_has_compatible_shallow_copy_type", "is_shared", "is_pinned", "__contains__", "__iter__",
})
# Ops whose output on low-precision inputs is exactly representable (value selections and
# rearrangements): their outputs are tagged but need no rounding pass. Checked by
# tests/emulate/test_ops.py::test_preserving_ops_keep_values_representable.
_PRESERVING = frozenset({
    "relu", "relu_", "max_pool1d", "max_pool2d", "max_pool3d", "max_pool1d_with_indices",
    "max_pool2d_with_indices", "max_pool3d_with_indices", "adaptive_max_pool1d",
    "adaptive_max_pool2d", "adaptive_max_pool3d", "cat", "concat", "concatenate", "stack",
    "hstack", "vstack", "clone", "contiguous", "neg", "__neg__", "abs", "__abs__", "maximum",
    "minimum", "amax", "amin", "max", "min", "gather", "index_select", "flip", "roll", "repeat",
    "pixel_shuffle", "pixel_unshuffle", "zeros_like", "ones_like", "masked_select", "take",
    "reshape", "flatten", "squeeze", "unsqueeze", "permute", "transpose", "t", "view",
    "expand", "narrow", "select", "split", "chunk", "unbind", "__getitem__", "detach",
    "movedim", "channel_shuffle", "sort", "topk", "tile", "repeat_interleave",
})
_INPLACE_DUNDERS = frozenset({
    "__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__", "__imod__",
    "__ipow__", "__setitem__", "__iand__", "__ior__", "__ixor__", "__ilshift__", "__irshift__",
})
_CASTS = {"half": torch.float16, "bfloat16": torch.bfloat16}
# Positional operands that the FP8 recipe leaves in high precision (the additive term of the
# add-GEMMs, the attention mask); bias vectors (ndim < 2) are never quantised either.
_FP8_SKIP_POS = {"addmm": {0}, "baddbmm": {0}, "addbmm": {0}, "addmv": {0}, "addr": {0},
                 "scaled_dot_product_attention": {3}}
_FP8_SKIP_KW = frozenset({"input", "bias", "attn_mask"})


def _known() -> str:
    presets = ", ".join(p for p in PRESETS)
    return f"formats: {', '.join(EMULATED_FORMATS)}; presets: {presets}"


def _resolve(policy: str | Policy | torch.dtype | FloatFormat | None) -> Policy | None:
    """A Policy (or None for "no emulation") from a policy, preset name or format name."""
    if policy is None:
        return None
    if isinstance(policy, Policy):
        p = policy
    elif isinstance(policy, (torch.dtype, FloatFormat)) or (
            isinstance(policy, str) and policy.strip().lower() in
            {"fp8", "fp8_e4m3", "fp8_e5m2", "e4m3", "e5m2", "float8_e4m3fn", "float8_e5m2",
             "bfloat16", "float16", "half"}):
        name = "fp8_e4m3" if str(policy).strip().lower() == "fp8" else policy
        try:
            f = get_format(name)
        except ValueError:
            raise ValueError(f"cannot emulate {policy!r}; known {_known()}") from None
        if f.name == "fp32":
            return PRESETS["32"]
        if f.name not in EMULATED_FORMATS:
            raise ValueError(f"cannot emulate format {f.name!r}; known {_known()}")
        p = Policy(torch.float32, f.dtype, torch.float32)
    else:
        try:
            p = Policy.parse(str(policy))
        except ValueError:
            raise ValueError(f"cannot emulate {policy!r}: unknown precision; known {_known()}"
                             ) from None
    fmt = get_format(p.compute_dtype).name
    if fmt not in ("fp32", *EMULATED_FORMATS):
        raise ValueError(f"cannot emulate compute dtype {p.compute_dtype}; known {_known()}")
    return p


@dataclass(frozen=True)
class _Frame:
    """One active emulate() region: what to round to and which rules to follow."""

    policy: Policy | None
    fmt: FloatFormat | None      # None: FP32, nothing is emulated
    grad_fmt: FloatFormat | None  # FP8 only: the format gradients are quantised to
    fp8: bool
    autocast: bool               # mixed/master presets: autocast's FP32/promote rules apply
    rules: str
    grad_mode_only: bool = False  # emulate only while grad mode is on (see ``recomputation``)

    @property
    def low(self) -> torch.dtype | None:
        return self.fmt.dtype if self.fmt is not None else None


class _State(threading.local):
    def __init__(self) -> None:
        self.frames: list[_Frame] = []
        self.mode: _EmulationMode | None = None
        self.saved_autocast: list[tuple[str, bool]] = []
        self.cache: dict[tuple, tuple[torch.Tensor, int, torch.Tensor]] = {}


_STATE = _State()
_LOWERS: dict[tuple, bool] = {}
_OUT_DTYPES: dict[tuple, tuple[torch.dtype | None, ...] | None] = {}


# -- tags ----------------------------------------------------------------------------------
def _tag_of(t: torch.Tensor) -> str | None:
    return t.__dict__.get(_TAG)


def _set_tag(t: torch.Tensor, name: str | None) -> None:
    if name is None:
        t.__dict__.pop(_TAG, None)
    else:
        t.__dict__[_TAG] = name


def logical_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype ``t`` would have on a GPU run: its emulated format's dtype, else ``t.dtype``."""
    name = _tag_of(t)
    return FORMATS[name].dtype if name is not None else t.dtype


def mark_storage(t: torch.Tensor, fmt: str | torch.dtype | FloatFormat | None) -> torch.Tensor:
    """Declare that FP32 tensor ``t`` (a parameter, say) is *stored* in ``fmt``: round it in
    place (under no_grad) and tag it, so emulated ops treat it as a low-precision tensor and
    round the gradients that reach it. ``fmt=None`` (or fp32) removes the tag. Returns ``t``."""
    f = get_format(fmt) if fmt is not None else FORMATS["fp32"]
    if f.name == "fp32":
        _set_tag(t, None)
        return t
    if f.name not in EMULATED_FORMATS:
        raise ValueError(f"cannot store in {f.name!r}; known {_known()}")
    if t.dtype != torch.float32:
        raise ValueError(f"mark_storage needs an FP32 tensor (emulation keeps storage in FP32), "
                         f"got {t.dtype}; call .float() first")
    with torch.no_grad():
        t.data.copy_(quantize(t.data, f))
    _set_tag(t, f.name)
    return t


def is_emulating() -> bool:
    """True inside an ``emulate(...)`` region that emulates a low-precision format."""
    return bool(_STATE.frames) and _STATE.frames[-1].fmt is not None


# -- argument helpers ------------------------------------------------------------------------
def _scan(args: tuple, kwargs: dict) -> tuple[list[torch.Tensor], list[torch.dtype]]:
    tensors: list[torch.Tensor] = []
    dtypes: list[torch.dtype] = []
    for a in (*args, *kwargs.values()):
        if isinstance(a, torch.Tensor):
            tensors.append(a)
        elif isinstance(a, (list, tuple)):
            for b in a:
                if isinstance(b, torch.Tensor):
                    tensors.append(b)
        elif isinstance(a, torch.dtype):
            dtypes.append(a)
    return tensors, dtypes


def _map_args(fn: Callable[[torch.Tensor, Any], torch.Tensor], args: tuple, kwargs: dict
              ) -> tuple[tuple, dict]:
    """Apply ``fn(tensor, position)`` to every tensor argument (one level into lists/tuples);
    position is the argument index or keyword name."""
    def one(a: Any, pos: Any) -> Any:
        if isinstance(a, torch.Tensor):
            return fn(a, pos)
        if isinstance(a, (list, tuple)) and any(isinstance(b, torch.Tensor) for b in a):
            return type(a)(fn(b, pos) if isinstance(b, torch.Tensor) else b for b in a)
        return a
    return (tuple(one(a, i) for i, a in enumerate(args)),
            {k: one(v, k) for k, v in kwargs.items()})


def _outputs(out: Any) -> list[torch.Tensor | None]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [o if isinstance(o, torch.Tensor) else None for o in out]
    return []


def _replace_outputs(out: Any, new: list[torch.Tensor | None]) -> Any:
    if isinstance(out, torch.Tensor):
        return new[0]
    if isinstance(out, list):
        return [n if n is not None else o for o, n in zip(out, new, strict=True)]
    if type(out) is tuple:
        return tuple(n if n is not None else o for o, n in zip(out, new, strict=True))
    # namedtuple-like return types (torch.return_types.max, ...)
    return type(out)(tuple(n if n is not None else o for o, n in zip(out, new, strict=True)))


def _is_inplace(name: str, kwargs: dict) -> bool:
    if "out" in kwargs:
        return True
    if name in _INPLACE_DUNDERS:
        return True
    return name.endswith("_") and not name.endswith("__")


def _storage_ptr(t: torch.Tensor) -> int:
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return -1


def _eligible(t: torch.Tensor) -> bool:
    """Autocast only touches floating tensors narrower than FP64."""
    return t.is_floating_point() and t.dtype != torch.float64


# -- the mode ----------------------------------------------------------------------------------
class _EmulationMode(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        # the frames of the thread that entered the region: autograd runs a CUDA backward (and
        # a checkpoint's recomputation in it) on its own device thread, which inherits the mode
        frames = getattr(self, "frames", None) or _STATE.frames
        frame = frames[-1] if frames else None
        if frame is None or frame.fmt is None or (frame.grad_mode_only and not torch.is_grad_enabled()):
            return func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if name in _META:
            return func(*args, **kwargs)
        tensors, dtype_args = _scan(args, kwargs)
        inplace = _is_inplace(name, kwargs)
        if not inplace and any(t.dtype == torch.float32 for t in tensors) and \
                self._lowers(func, args, kwargs, frame):
            if frame.fp8:
                return self._fp8_call(func, name, args, kwargs, frame)
            return self._lowered_call(func, name, args, kwargs, frame)
        if frame.fp8:
            return func(*args, **kwargs)
        fname = frame.fmt.name
        low = frame.low
        if name in _CASTS:
            dtype_args.append(_CASTS[name])
        if not any(_tag_of(t) == fname or t.dtype == low for t in tensors) and low not in dtype_args:
            return func(*args, **kwargs)  # an all-FP32 op: nothing to emulate
        return self._follow_call(func, name, args, kwargs, tensors, dtype_args, inplace, frame)

    # -- classification (memoised probes) ----------------------------------------------------
    @staticmethod
    def _lowers(func, args, kwargs, frame: _Frame) -> bool:
        probe_dtype = frame.low if not frame.fp8 else torch.float16
        key = (func, frame.rules, probe_dtype)
        hit = _LOWERS.get(key)
        if hit is None:
            hit = _LOWERS[key] = lowers(func, args, kwargs, frame.rules, probe_dtype)
        return hit

    @staticmethod
    def _out_dtypes(func, args, kwargs, tensors, dtype_args, frame: _Frame):
        fname, low = frame.fmt.name, frame.low
        pattern = tuple(("L" if _tag_of(t) == fname else t.dtype, t.dim() == 0) for t in tensors)
        key = (func, frame.rules, low, frame.autocast, pattern, tuple(dtype_args))
        if key in _OUT_DTYPES:
            return _OUT_DTYPES[key]

        def dtype_of(t: torch.Tensor) -> torch.dtype:
            return low if _tag_of(t) == fname else t.dtype

        res = output_dtypes(func, args, kwargs, frame.rules, dtype_of,
                            low if frame.autocast else None)
        _OUT_DTYPES[key] = res
        return res

    # -- operands ------------------------------------------------------------------------------
    @staticmethod
    def _cached(t: torch.Tensor, kind: str, make: Callable[[torch.Tensor], torch.Tensor]
                ) -> torch.Tensor:
        """Autocast-style cache of the rounded copy of a leaf that requires grad (a parameter),
        valid until the outermost region exits or the leaf is modified in place."""
        if not (t.is_leaf and t.requires_grad):
            return make(t)
        key = (id(t), kind, torch.is_grad_enabled())
        hit = _STATE.cache.get(key)
        if hit is not None and hit[0] is t and hit[1] == t._version:
            return hit[2]
        out = make(t)
        _STATE.cache[key] = (t, t._version, out)
        return out

    def _operand(self, t: torch.Tensor, frame: _Frame) -> torch.Tensor:
        if not _eligible(t):
            return t
        fmt = frame.fmt
        tag = _tag_of(t)
        if t.dtype == fmt.dtype:
            return t.float()  # a real low-precision tensor: exact widening
        if tag == fmt.name and not (t.is_leaf and t.requires_grad):
            return t  # already rounded; its producer rounds the gradient that reaches it

        def make(x: torch.Tensor) -> torch.Tensor:
            q = quantize(x, fmt)
            _set_tag(q, fmt.name)
            return q
        return self._cached(t, fmt.name, make)

    def _finish_low(self, o: torch.Tensor, frame: _Frame, round_values: bool) -> torch.Tensor:
        fmt = frame.fmt
        if round_values:
            round_storage_(o, fmt)  # in place, no version bump (see module docstring)
        if o.requires_grad:
            o.register_hook(grad_rounder(fmt))
        _set_tag(o, fmt.name)
        return o

    # -- the three kinds of call -----------------------------------------------------------------
    def _lowered_call(self, func, name, args, kwargs, frame: _Frame):
        args2, kwargs2 = _map_args(lambda t, _pos: self._operand(t, frame), args, kwargs)
        out = func(*args2, **kwargs2)
        # Attention saves its output for backward: round a copy so the backward sees the FP32
        # output (the correctly-rounded model; see docs/emulate.md on flash attention).
        saves_output = "attention" in name
        new: list[torch.Tensor | None] = []
        for o in _outputs(out):
            if o is None or o.dtype != torch.float32:
                new.append(o)
            elif saves_output:
                o = quantize(o, frame.fmt)  # its backward rounds the incoming gradient
                _set_tag(o, frame.fmt.name)
                new.append(o)
            else:
                new.append(self._finish_low(o, frame, True))
        return _replace_outputs(out, new) if new else out

    def _fp8_call(self, func, name, args, kwargs, frame: _Frame):
        skip = _FP8_SKIP_POS.get(name, ())
        fwd = frame.fmt

        def operand(t: torch.Tensor, pos: Any) -> torch.Tensor:
            if not _eligible(t) or t.dim() < 2 or pos in skip or pos in _FP8_SKIP_KW:
                return t
            return self._cached(t.float(), fwd.name, lambda x: _fp8.fp8_operand(x, fwd))

        args2, kwargs2 = _map_args(operand, args, kwargs)
        out = func(*args2, **kwargs2)
        for o in _outputs(out):
            if o is not None and o.dtype == torch.float32 and o.requires_grad:
                o.register_hook(_fp8.fp8_grad_hook(frame.grad_fmt))
        return out

    def _follow_call(self, func, name, args, kwargs, tensors, dtype_args, inplace,
                     frame: _Frame):
        fmt, low = frame.fmt, frame.low
        # a parameter stored in the low format enters through its cached rounded copy, whose
        # backward rounds the parameter's gradient
        if any(_tag_of(t) == fmt.name and t.is_leaf and t.requires_grad for t in tensors):
            args, kwargs = _map_args(
                lambda t, _pos: self._operand(t, frame)
                if _tag_of(t) == fmt.name and t.is_leaf and t.requires_grad else t, args, kwargs)
        logical = self._out_dtypes(func, args, kwargs, tensors, dtype_args, frame)
        out = func(*args, **kwargs)
        if inplace:  # the target keeps its dtype: a low target is rounded in place
            target = args[0] if args and isinstance(args[0], torch.Tensor) else None
            if target is not None and _tag_of(target) == fmt.name and name not in _PRESERVING \
                    and target.dtype == torch.float32:
                self._finish_low(target, frame, True)
            return out
        outs = _outputs(out)
        if not outs:
            return out
        in_ptrs = None
        new: list[torch.Tensor | None] = []
        for i, o in enumerate(outs):
            if o is None or not o.is_floating_point():
                new.append(o)
                continue
            want = logical[i] if logical is not None and i < len(logical) else None
            if want is None and logical is None:
                want = self._promote(tensors, frame)
            if o.dtype == low:  # a real low-precision result (an explicit cast, say)
                o = o.float()
                self._finish_low(o, frame, False)
            elif o.dtype == torch.float32 and want == low:
                if any(o is t for t in tensors):
                    pass  # returned an input unchanged (x.contiguous() on a low tensor)
                else:
                    if in_ptrs is None:
                        in_ptrs = {_storage_ptr(t) for t in tensors}
                    alias = _storage_ptr(o) in in_ptrs
                    self._finish_low(o, frame, not alias and name not in _PRESERVING)
            elif o.dtype == torch.float32 and _tag_of(o) is not None:
                # the op returned a low-tagged input as is, but logically it is now FP32
                o = o.view_as(o)
                _set_tag(o, None)
            new.append(o)
        return _replace_outputs(out, new)

    @staticmethod
    def _promote(tensors: list[torch.Tensor], frame: _Frame) -> torch.dtype:
        """Type promotion on logical dtypes, for functions the probe cannot run."""
        fname = frame.fmt.name
        dims = [t for t in tensors if _eligible(t) and t.dim() > 0] or \
            [t for t in tensors if _eligible(t)]
        if dims and all(_tag_of(t) == fname or t.dtype == frame.low for t in dims):
            return frame.low
        return torch.float32


# -- the public context manager ----------------------------------------------------------------
class emulate:
    """Run the numerics of a precision policy in FP32 arithmetic, on any device.

    ``with mixprec.emulate("16-mixed"): loss = loss_fn(model(x), y)`` behaves as
    ``torch.autocast("cuda", torch.float16)`` would on a GPU, value for value: wherever a GPU
    would hold a tensor in FP16 (outputs of matmuls and convolutions, of the elementwise ops
    that follow them, their gradients), the emulator holds the same values in an FP32 tensor.
    Tensors keep ``dtype == torch.float32``; ``logical_dtype(t)`` tells what a GPU would use.
    The backward pass may run outside the region: the rounding of gradients lives in the graph.

    ``policy``: a ``Policy``, a preset (``"16-mixed"``, ``"bf16-master"``, ``"16-true"``,
    ``"fp8-mixed"``, ``"32"``), or a format (``"fp16"``, ``"bf16"``, ``"fp8_e4m3"``,
    ``"fp8_e5m2"``); unknown names raise ``ValueError`` listing the known ones.

    * mixed/master presets follow autocast: ops on autocast's low-precision list round their
      floating inputs, accumulate in FP32 and round their outputs; ops on its FP32 list stay
      FP32; the rest follow their inputs' (logical) dtypes;
    * ``*-true`` presets have no autocast: ops follow their inputs' dtypes (softmax of an FP16
      tensor is FP16). GEMM/convolution operands are rounded to the format, as if the inputs
      had been cast to it (real ``*-true`` code must cast them). Parameters stored in the
      format are declared with :func:`mark_storage` (``Precision(..., emulate=True)`` does so);
    * FP8 presets/formats use the per-tensor current-scaling recipe of torchao ``tensorwise`` /
      Transformer Engine ``Float8CurrentScaling`` (see ``mixprec.emulate.fp8``): GEMM operands
      in E4M3 (``fp8_e5m2`` policy: E5M2), incoming gradients in E5M2, outputs and produced
      gradients in FP32; every other op runs in FP32. Unlike torchao/TE (Linear only) the
      recipe applies to every op autocast lowers (convolutions and attention included).

    ``rules``: whose autocast op lists to follow: ``"cuda"`` (default; what a GPU run does) or
    ``"cpu"`` (to compare with CPU autocast). They are read from torch itself by probing.

    Nesting: the innermost region's policy wins; ``emulate("32")`` or ``enabled=False`` inside
    turns emulation off for its body. Exiting (also on an exception) restores everything:
    the torch-function mode, autocast flags (real autocast is off inside a region) and the
    rounded-weight cache. Host syncs: none, except the one-off probe per new function.
    """

    def __init__(self, policy: str | Policy | torch.dtype | FloatFormat | None = "16-mixed", *,
                 rules: str = "cuda", enabled: bool = True) -> None:
        if rules not in RULES:
            raise ValueError(f"rules={rules!r}: use one of {', '.join(RULES)}")
        self.policy = _resolve(policy) if enabled else None
        self.rules = rules
        self._frame = self._make_frame()
        self._depths: list[int] = []

    def _make_frame(self) -> _Frame:
        p = self.policy
        if p is None or p.compute_dtype == torch.float32:
            return _Frame(p, None, None, False, False, self.rules)
        f = get_format(p.compute_dtype)
        if f.name in _FP8_FORMATS:
            grad = FORMATS["fp8_e5m2"]
            return _Frame(p, f, grad, True, True, self.rules)
        return _Frame(p, f, None, False, p.uses_autocast, self.rules)

    @property
    def format(self) -> FloatFormat | None:
        """The emulated compute format (None when this region emulates nothing)."""
        return self._frame.fmt

    def __enter__(self) -> emulate:
        st = _STATE
        if not st.frames:
            st.saved_autocast = [(d, torch.is_autocast_enabled(d)) for d in ("cpu", "cuda")]
            for d, _ in st.saved_autocast:
                torch.set_autocast_enabled(d, False)
            st.mode = _EmulationMode()
            st.mode.frames = st.frames
            try:
                st.mode.__enter__()
            except BaseException:
                self._restore_outer(st)
                raise
        st.frames.append(self._frame)
        self._depths.append(len(st.frames))
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        st = _STATE
        depth = self._depths.pop() if self._depths else len(st.frames)
        del st.frames[depth - 1:]  # also drops frames an exception left behind
        if not st.frames:
            mode, st.mode = st.mode, None
            try:
                if mode is not None:
                    mode.__exit__(exc_type, exc, tb)
            finally:
                self._restore_outer(st)

    @staticmethod
    def _restore_outer(st: _State) -> None:
        for d, was in st.saved_autocast:
            torch.set_autocast_enabled(d, was)
        st.saved_autocast = []
        st.cache.clear()
        st.frames.clear()

    def __repr__(self) -> str:
        return f"emulate({str(self.policy) if self.policy else None!r}, rules={self.rules!r})"


def recomputation(policy: str | Policy | None, rules: str = "cuda") -> emulate:
    """A region to run ``loss.backward()`` in, so that forward code recomputed during backward
    (activation checkpointing: ``torch.utils.checkpoint``, which restores autocast but knows no
    emulator) is emulated as the forward was. It emulates only where grad mode is on -- the
    recomputation -- and leaves the backward itself (grad mode off: gradient hooks, custom
    backward functions) as it runs outside any region. ``Precision.backward`` enters it."""
    region = emulate(policy, rules=rules)
    region._frame = dataclasses.replace(region._frame, grad_mode_only=True)
    return region
