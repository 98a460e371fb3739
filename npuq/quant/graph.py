"""Graph work on a torch.fx trace: tracing, BatchNorm folding, op classification, quantizer placement.

Nothing here knows about a particular model. Every node of the traced graph is classified by what the
NPU does with it:

- ``weighted``: Conv1d/2d/3d, ConvTranspose1d/2d/3d, Linear (weights quantized, output stored);
- ``bn``: BatchNorm left unfolded (a per-channel affine op, output stored);
- ``relu``: ReLU, fused into a preceding weighted / bn / elementwise op whose only user it is;
- ``clip``: a clamp to constant bounds (Clip, ReLU6, Hardtanh), fused into a preceding weighted / bn /
  elementwise / activation op (after its fused ReLU) whose only user it is, so that only the clipped
  tensor is stored: the fusions npuq assumes of an NPU profile (conv+ReLU+Clip, ELU+Clip) unless its
  ``fuse_clip`` is false (ONNX Runtime's QDQ quantizer, the probe kit finds, quantizes both tensors);
- ``activation``: ELU, sigmoid, tanh, leaky ReLU, ReLU6, SiLU, hard-swish/sigmoid, PReLU;
- ``eltwise``: tensor-tensor add / sub / mul; ``scalar``: a tensor with a Python number (chains of
  these, like input normalisation ``(x - m) / s``, fuse into one op);
- ``cat``, ``resize`` (interpolate / Upsample), ``pool`` (max / avg / adaptive pools);
- ``movement``: pads, reshapes, pixel shuffles, getitem, split, dropout ... which only move or copy
  values, so the integer grid of their input carries through and they get no quantizer;
- ``unsupported``: everything else that computes new values (GroupNorm, LayerNorm, softmax, unknown
  functions/methods/modules). These run in float, get an activation quantizer, and are reported.

Quantizers sit where the NPU stores a tensor: after each network input, after every op above except
``movement`` (after the fused ReLU when there is one), and one per model output (the producer's own
quantizer is tagged as the output quantizer when it has one). Constants read with ``get_attr`` are
not quantized.
"""

from __future__ import annotations

import operator
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata
from torch.nn.modules.batchnorm import _BatchNorm

from npuq.errors import NpuqError

WEIGHTED_MODULES: dict[type, str] = {
    nn.Conv1d: "conv", nn.Conv2d: "conv", nn.Conv3d: "conv",
    nn.ConvTranspose1d: "conv_transpose", nn.ConvTranspose2d: "conv_transpose",
    nn.ConvTranspose3d: "conv_transpose", nn.Linear: "linear",
}
FOLDABLE_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
ACTIVATION_MODULES: dict[type, str] = {
    nn.ELU: "elu", nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.LeakyReLU: "leaky_relu",
    nn.SiLU: "silu", nn.Hardswish: "hardswish", nn.Hardsigmoid: "hardsigmoid",
    nn.PReLU: "prelu",
}
RESIZE_MODULES = (nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d)
POOL_MODULES: dict[type, str] = {
    nn.MaxPool1d: "maxpool", nn.MaxPool2d: "maxpool", nn.MaxPool3d: "maxpool",
    nn.AdaptiveMaxPool1d: "maxpool", nn.AdaptiveMaxPool2d: "maxpool", nn.AdaptiveMaxPool3d: "maxpool",
    nn.AvgPool1d: "avgpool", nn.AvgPool2d: "avgpool", nn.AvgPool3d: "avgpool",
    nn.AdaptiveAvgPool1d: "avgpool", nn.AdaptiveAvgPool2d: "avgpool", nn.AdaptiveAvgPool3d: "avgpool",
}
PAD_MODULES = (
    nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d, nn.ReplicationPad1d, nn.ReplicationPad2d,
    nn.ReplicationPad3d, nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d,
    nn.ConstantPad3d,
)
MOVEMENT_MODULES = PAD_MODULES + (
    nn.PixelShuffle, nn.PixelUnshuffle, nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout, nn.Dropout1d,
    nn.Dropout2d, nn.Dropout3d, nn.ChannelShuffle,
)

RELU_FUNCTIONS = {F.relu, torch.relu, torch.relu_}
ACTIVATION_FUNCTIONS: dict[Any, str] = {
    F.elu: "elu", torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid", torch.tanh: "tanh", F.tanh: "tanh",
    F.leaky_relu: "leaky_relu", F.silu: "silu", F.hardswish: "hardswish",
    F.hardsigmoid: "hardsigmoid", F.prelu: "prelu",
}
ARITH_FUNCTIONS: dict[Any, str] = {
    operator.add: "add", operator.iadd: "add", torch.add: "add",
    operator.sub: "sub", operator.isub: "sub", torch.sub: "sub",
    operator.mul: "mul", operator.imul: "mul", torch.mul: "mul",
    operator.truediv: "div", operator.itruediv: "div", torch.div: "div",
}
CAT_FUNCTIONS = {torch.cat, torch.concat, torch.concatenate}
RESIZE_FUNCTIONS = {F.interpolate, F.upsample, F.upsample_nearest, F.upsample_bilinear}
POOL_FUNCTIONS: dict[Any, str] = {
    F.max_pool1d: "maxpool", F.max_pool2d: "maxpool", F.max_pool3d: "maxpool",
    F.adaptive_max_pool1d: "maxpool", F.adaptive_max_pool2d: "maxpool", F.adaptive_max_pool3d: "maxpool",
    F.avg_pool1d: "avgpool", F.avg_pool2d: "avgpool", F.avg_pool3d: "avgpool",
    F.adaptive_avg_pool1d: "avgpool", F.adaptive_avg_pool2d: "avgpool", F.adaptive_avg_pool3d: "avgpool",
}
MOVEMENT_FUNCTIONS = {
    F.pad, torch.flatten, torch.reshape, operator.getitem, torch.permute, torch.transpose, torch.squeeze,
    torch.unsqueeze, torch.pixel_shuffle, torch.pixel_unshuffle, F.pixel_shuffle, F.pixel_unshuffle,
    torch.split, torch.chunk, torch.unbind, torch.narrow, torch.movedim, torch.t, F.dropout, F.dropout2d,
}
RELU_METHODS = {"relu", "relu_"}
CLIP_MODULES = (nn.ReLU6, nn.Hardtanh)  # ReLU6 subclasses Hardtanh
CLIP_FUNCTIONS = {torch.clamp, torch.clip, F.relu6, F.hardtanh}
CLIP_METHODS = {"clamp", "clip"}
ACTIVATION_METHODS = {"sigmoid": "sigmoid", "sigmoid_": "sigmoid", "tanh": "tanh", "tanh_": "tanh"}
ARITH_METHODS = {"add": "add", "add_": "add", "sub": "sub", "sub_": "sub", "mul": "mul", "mul_": "mul",
                 "div": "div", "div_": "div"}
MOVEMENT_METHODS = {
    "view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "permute", "transpose", "contiguous",
    "squeeze", "unsqueeze", "expand", "expand_as", "repeat", "split", "chunk", "unbind", "narrow", "t",
    "clone", "detach", "float", "to", "type_as", "movedim",
}

# Ops that a ReLU directly after them fuses into (no stored tensor between).
RELU_FUSING = {"weighted", "bn", "eltwise"}
# Ops that a constant clamp directly after them (or after their fused ReLU) fuses into.
CLIP_FUSING = {"weighted", "bn", "eltwise", "activation"}
# Categories whose output the NPU stores, so they get an activation quantizer.
COMPUTE = {"weighted", "bn", "relu", "clip", "activation", "eltwise", "scalar", "cat", "resize", "pool",
           "unsupported"}


@dataclass(frozen=True)
class NodeInfo:
    """What the NPU does with one graph node."""

    category: str
    op: str = ""
    type_name: str = ""


@dataclass
class QuantPoint:
    """One activation quantizer to insert: after ``anchor`` (an fx node name)."""

    name: str
    kind: str  # "input" | "activation" | "output"
    layer: str
    op: str
    anchor: str
    order: int
    supported: bool = True
    output_index: int | None = None
    output_only: bool = False  # applies only to the model output, not to the anchor's other users


@dataclass
class QuantPlan:
    """Where quantizers go, which conv/linear reads which quantizer, and what the NPU cannot run."""

    points: list[QuantPoint] = field(default_factory=list)
    weighted_layers: dict[str, str] = field(default_factory=dict)  # module name -> op
    layer_inputs: dict[str, str | None] = field(default_factory=dict)  # module name -> quantizer name
    unsupported_ops: list[str] = field(default_factory=list)


def trace(model: nn.Module) -> fx.GraphModule:
    """Symbolically trace ``model`` (which must be in eval mode); NpuqError when fx cannot."""
    try:
        return fx.symbolic_trace(model)
    except Exception as exc:  # fx raises many kinds of errors for untraceable Python
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise NpuqError(f"model {type(model).__name__}: torch.fx cannot trace it ({first})") from None


def propagate_shapes(gm: fx.GraphModule, example_inputs: tuple[torch.Tensor, ...]) -> None:
    """Record ``tensor_meta`` on every node so tensor and non-tensor values can be told apart."""
    with torch.no_grad():
        ShapeProp(gm).propagate(*example_inputs)


def is_tensor(node: Any) -> bool:
    return isinstance(node, fx.Node) and isinstance(node.meta.get("tensor_meta"), TensorMetadata)


def has_tensor_parts(node: fx.Node) -> bool:
    """A node whose value is a tuple/list holding tensors (split, chunk, max with dim ...)."""
    meta = node.meta.get("tensor_meta")
    return isinstance(meta, tuple | list) and any(isinstance(m, TensorMetadata) for m in meta)


def tensor_inputs(node: fx.Node) -> list[fx.Node]:
    """The tensor-valued nodes among a node's inputs, in argument order."""
    return [n for n in node.all_input_nodes if is_tensor(n) or has_tensor_parts(n)]


def call_counts(gm: fx.GraphModule) -> Counter:
    """How many times each submodule is called in the graph."""
    return Counter(n.target for n in gm.graph.nodes if n.op == "call_module")


def classify(node: fx.Node, modules: dict[str, nn.Module]) -> NodeInfo:
    """The NPU category of ``node`` (see the module docstring)."""
    if node.op in ("placeholder", "output", "get_attr"):
        return NodeInfo(node.op)
    if not (is_tensor(node) or has_tensor_parts(node)):
        return NodeInfo("non_tensor")
    if node.op == "call_module":
        return _classify_module(modules[node.target])
    if node.op == "call_function":
        return _classify_function(node)
    return _classify_method(node)


def _classify_module(mod: nn.Module) -> NodeInfo:
    name = type(mod).__name__
    if type(mod) in WEIGHTED_MODULES:
        return NodeInfo("weighted", WEIGHTED_MODULES[type(mod)], name)
    if isinstance(mod, _BatchNorm):
        return NodeInfo("bn", "batchnorm", name)
    if isinstance(mod, nn.ReLU):
        return NodeInfo("relu", "relu", name)
    if isinstance(mod, CLIP_MODULES):
        return NodeInfo("clip", "clip", name)
    for table, category in ((ACTIVATION_MODULES, "activation"), (POOL_MODULES, "pool")):
        for cls, op in table.items():
            if isinstance(mod, cls):
                return NodeInfo(category, op, name)
    if isinstance(mod, RESIZE_MODULES):
        return NodeInfo("resize", "interpolate", name)
    if isinstance(mod, MOVEMENT_MODULES):
        return NodeInfo("movement", name.lower(), name)
    return NodeInfo("unsupported", name.lower(), name)


def _function_name(target: Any) -> str:
    return getattr(target, "__name__", str(target))


def _classify_function(node: fx.Node) -> NodeInfo:
    fn, name = node.target, _function_name(node.target)
    if fn in RELU_FUNCTIONS:
        return NodeInfo("relu", "relu", name)
    if fn in CLIP_FUNCTIONS:
        return _classify_clip(node, name)
    if fn in ACTIVATION_FUNCTIONS:
        return NodeInfo("activation", ACTIVATION_FUNCTIONS[fn], name)
    if fn in ARITH_FUNCTIONS:
        return _classify_arith(node, ARITH_FUNCTIONS[fn], name)
    if fn in CAT_FUNCTIONS:
        return NodeInfo("cat", "cat", name)
    if fn in RESIZE_FUNCTIONS:
        return NodeInfo("resize", "interpolate", name)
    if fn in POOL_FUNCTIONS:
        return NodeInfo("pool", POOL_FUNCTIONS[fn], name)
    if fn in MOVEMENT_FUNCTIONS:
        return NodeInfo("movement", name, name)
    return NodeInfo("unsupported", name, name)


def _classify_method(node: fx.Node) -> NodeInfo:
    name = str(node.target)
    if name in RELU_METHODS:
        return NodeInfo("relu", "relu", name)
    if name in CLIP_METHODS:
        return _classify_clip(node, name)
    if name in ACTIVATION_METHODS:
        return NodeInfo("activation", ACTIVATION_METHODS[name], name)
    if name in ARITH_METHODS:
        return _classify_arith(node, ARITH_METHODS[name], name)
    if name in MOVEMENT_METHODS:
        return NodeInfo("movement", name, name)
    return NodeInfo("unsupported", name, name)


def _classify_clip(node: fx.Node, name: str) -> NodeInfo:
    """A clamp whose bounds are numbers (or absent) is a Clip; tensor bounds are not an NPU op."""
    bounds = [*node.args[1:], *node.kwargs.values()]
    if any(isinstance(b, fx.Node) for b in bounds):
        return NodeInfo("unsupported", name, name)
    return NodeInfo("clip", "clip", name)


def _classify_arith(node: fx.Node, op: str, name: str) -> NodeInfo:
    """Tensor (op) tensor is an elementwise op; tensor (op) number is a scalar op; the NPU has no
    tensor/tensor division."""
    operands = list(node.args[:2])
    tensors = [a for a in operands if is_tensor(a)]
    numbers = [a for a in operands if isinstance(a, int | float) and not isinstance(a, bool)]
    if len(tensors) == 2:
        return NodeInfo("unsupported", op, name) if op == "div" else NodeInfo("eltwise", op, name)
    if len(tensors) == 1 and len(numbers) == 1 and len(node.args) == 2:
        if op == "div" and is_tensor(operands[1]):
            return NodeInfo("unsupported", "rdiv", name)
        return NodeInfo("scalar", op, name)
    return NodeInfo("unsupported", op, name)


def single_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


# -- BatchNorm folding ------------------------------------------------------------------------------


def fold_batchnorm(gm: fx.GraphModule) -> list[str]:
    """Fold every eval-mode BatchNorm into the conv before it (conv output used only by the BN, both
    modules called once). Returns the folded BN module names. Exact up to float rounding: the new
    weight is W * gamma / sqrt(var + eps) and the new bias (b - mean) * gamma / sqrt(var + eps) + beta.
    """
    modules = dict(gm.named_modules())
    calls = call_counts(gm)
    folded = []
    for node in list(gm.graph.nodes):
        if not (node.op == "call_module" and isinstance(modules[node.target], _BatchNorm)):
            continue
        conv_node = node.args[0] if node.args else None
        if not (isinstance(conv_node, fx.Node) and conv_node.op == "call_module"):
            continue
        conv, bn = modules[conv_node.target], modules[node.target]
        foldable = type(conv) in FOLDABLE_CONVS and conv.out_channels == bn.num_features
        single_use = len(conv_node.users) == 1 and calls[conv_node.target] == 1 and calls[node.target] == 1
        if not (foldable and single_use and bn.running_mean is not None):
            continue
        _fold_into_conv(conv, bn)
        node.replace_all_uses_with(conv_node)
        gm.graph.erase_node(node)
        gm.delete_submodule(node.target)
        folded.append(node.target)
    gm.recompile()
    return folded


@torch.no_grad()
def _fold_into_conv(conv: nn.Module, bn: _BatchNorm) -> None:
    """The per-channel factors are computed in float64, then applied in the weights' precision."""
    mean, var = bn.running_mean.double(), bn.running_var.double()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(mean)
    factor = gamma / torch.sqrt(var + bn.eps)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(mean)
    weight, trainable = conv.weight.detach(), conv.weight.requires_grad
    scaled = weight * factor.to(weight.dtype).reshape(-1, *([1] * (weight.dim() - 1)))
    conv.weight = nn.Parameter(scaled, requires_grad=trainable)
    conv.bias = nn.Parameter(((bias - mean) * factor + beta).to(weight.dtype), requires_grad=trainable)


# -- quantizer placement ----------------------------------------------------------------------------


class _Planner:
    """Walks the graph once in order and decides every quantizer (see ``plan_quantizers``)."""

    def __init__(self, gm: fx.GraphModule, fuse_clip: bool = True):
        self.gm = gm
        self.fuse_clip = fuse_clip
        self.modules = dict(gm.named_modules())
        self.plan = QuantPlan()
        self.source: dict[fx.Node, str | None] = {}  # tensor node -> quantizer whose grid it lies on
        self.fused: set[fx.Node] = set()
        self.chain: dict[fx.Node, tuple[fx.Node, list[str]]] = {}  # scalar chains: start, ops
        self.tuple_producers: dict[fx.Node, QuantPoint] = {}
        self.name_counts: Counter = Counter()
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        self.single_input = len(placeholders) == 1

    def layer_of(self, node: fx.Node) -> str:
        return str(node.target) if node.op == "call_module" else node.name

    def add_point(self, kind: str, layer: str, op: str, anchor: fx.Node, supported: bool = True,
                  output_index: int | None = None, output_only: bool = False) -> QuantPoint:
        if kind == "input":
            name = "input" if self.single_input else f"input.{layer}"
        else:
            seen = self.name_counts[layer]
            name = layer if seen == 0 else f"{layer}#{seen}"
        self.name_counts[layer] += 1
        point = QuantPoint(name=name, kind=kind, layer=layer, op=op, anchor=anchor.name,
                           order=len(self.plan.points), supported=supported, output_index=output_index,
                           output_only=output_only)
        self.plan.points.append(point)
        return point

    def run(self) -> QuantPlan:
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                self.source[node] = self.add_point("input", node.name, "input", node).name
            elif node.op == "output":
                self.visit_output(node)
            elif node not in self.fused:
                self.visit(node, classify(node, self.modules))
        return self.plan

    def visit(self, node: fx.Node, info: NodeInfo) -> None:
        if info.category == "movement":
            self.visit_movement(node)
        elif info.category in COMPUTE:
            self.visit_compute(node, info)
        if info.category == "weighted":
            self.record_weighted_input(node, info)

    def visit_movement(self, node: fx.Node) -> None:
        inputs = tensor_inputs(node)
        parent = inputs[0] if inputs else None
        if parent in self.tuple_producers and is_tensor(node):
            producer = self.tuple_producers[parent]
            point = self.add_point("activation", producer.layer, producer.op, node, producer.supported)
            self.source[node] = point.name
        else:
            self.source[node] = self.source.get(parent) if parent is not None else None

    def visit_compute(self, node: fx.Node, info: NodeInfo) -> None:
        start, ops = self.chain.pop(node, (node, []))
        ops = [*ops, info.op]
        user = single_user(node)
        user_category = classify(user, self.modules).category if user is not None else None
        if info.category == "scalar" and user_category == "scalar":
            self.chain[user] = (start, ops)  # the user is visited normally and closes the chain
            return
        anchor = node
        if info.category in RELU_FUSING and user_category == "relu":
            anchor = user
            ops.append("relu")
            self.fused.add(user)
            user = single_user(anchor)
            user_category = classify(user, self.modules).category if user is not None else None
        if self.fuse_clip and info.category in CLIP_FUSING and user_category == "clip":
            anchor = user
            ops.append("clip")
            self.fused.add(user)
        supported = info.category != "unsupported"
        layer = self.layer_of(start)
        if not supported:
            self.plan.unsupported_ops.append(f"{layer} ({info.type_name})")
        if not is_tensor(anchor):  # a tuple of tensors: each getitem gets the quantizer
            self.tuple_producers[anchor] = QuantPoint("", "activation", layer, "+".join(ops), anchor.name, -1,
                                                      supported)
            return
        point = self.add_point("activation", layer, "+".join(ops), anchor, supported)
        self.source[node] = self.source[anchor] = point.name

    def record_weighted_input(self, node: fx.Node, info: NodeInfo) -> None:
        layer = str(node.target)
        inputs = tensor_inputs(node)
        source = self.source.get(inputs[0]) if inputs else None
        if layer in self.plan.layer_inputs and self.plan.layer_inputs[layer] != source:
            source = None  # a module called on differently quantized inputs: its bias stays float
        self.plan.layer_inputs[layer] = source
        self.plan.weighted_layers[layer] = info.op

    def visit_output(self, node: fx.Node) -> None:
        tagged: set[str] = set()
        for index, leaf in enumerate(output_leaves(node)):
            name = self.source.get(leaf)
            point = self.point(name) if name is not None else None
            if point is not None and point.output_index is None and name not in tagged:
                point.kind, point.output_index = "output", index
                tagged.add(name)
            else:
                self.add_point("output", self.layer_of(leaf), "output", leaf, output_index=index,
                               output_only=True)

    def point(self, name: str) -> QuantPoint:
        return next(p for p in self.plan.points if p.name == name)


def output_leaves(output_node: fx.Node) -> list[fx.Node]:
    """The tensor nodes a graph returns, in output-structure order (an output tuple's elements)."""
    leaves: list[fx.Node] = []
    fx.node.map_arg(output_node.args[0], lambda n: leaves.append(n) or n)
    return [n for n in leaves if is_tensor(n)]


def plan_quantizers(gm: fx.GraphModule, fuse_clip: bool = True) -> QuantPlan:
    """Decide where the NPU stores tensors (see the module docstring). Needs ``propagate_shapes`` first.
    ``fuse_clip``: False for a toolchain that stores (and quantizes) a tensor before its clamp too."""
    return _Planner(gm, fuse_clip).run()


def insert_quantizers(gm: fx.GraphModule, plan: QuantPlan, modules: dict[str, nn.Module]) -> None:
    """Insert ``modules[point.name]`` after each point's anchor as a ``call_module`` node."""
    nodes = {n.name: n for n in gm.graph.nodes}
    output_node = next(n for n in gm.graph.nodes if n.op == "output")
    for i, point in enumerate(plan.points):
        target = f"npuq_act_quant_{i}"
        gm.add_submodule(target, modules[point.name])
        anchor = nodes[point.anchor]
        if point.output_only:
            _insert_for_output(gm, output_node, point.output_index, target)
            continue
        with gm.graph.inserting_after(anchor):
            qnode = gm.graph.call_module(target, (anchor,))
        qnode.meta["tensor_meta"] = anchor.meta.get("tensor_meta")
        anchor.replace_all_uses_with(qnode, delete_user_cb=lambda user, q=qnode: user is not q)
    gm.graph.lint()
    gm.recompile()


def _insert_for_output(gm: fx.GraphModule, output_node: fx.Node, index: int, target: str) -> None:
    """Wrap the ``index``-th tensor leaf of the graph output in a quantizer call."""
    counter = iter(range(1 << 30))
    created: list[fx.Node] = []

    def replace(n: fx.Node) -> fx.Node:
        if not is_tensor(n) or next(counter) != index:
            return n
        with gm.graph.inserting_before(output_node):
            qnode = gm.graph.call_module(target, (n,))
        qnode.meta["tensor_meta"] = n.meta.get("tensor_meta")
        created.append(qnode)
        return qnode

    output_node.args = (fx.node.map_arg(output_node.args[0], replace),)
    if not created:
        raise RuntimeError(f"model output #{index} not found while inserting its quantizer")
