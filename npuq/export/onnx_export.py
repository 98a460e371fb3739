"""ONNX export: the float network, and the simulated INT8 network as a QDQ graph.

Both use the TorchScript exporter (``torch.onnx.export(..., dynamo=False)``) at opset 17. The dynamo
exporter was tried: it is ~30x slower on these models, prints progress banners, and emits opset 18
which it then down-converts through the onnx C API; the TorchScript exporter emits opset 17 directly
and maps ``fake_quantize_per_tensor_affine`` to QuantizeLinear/DequantizeLinear, which the QDQ export
builds on.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from torch import nn

from npuq.errors import NpuqError
from npuq.io import atomic_write, check_writable
from npuq.models.modes import eval_mode

OPSET = 17
INPUT_NAME = "rgb"


def default_output_names(model: nn.Module, n_outputs: int) -> list[str]:
    """``model.head.output_names`` when the model has a head, else ``output`` / ``output0..``."""
    head = getattr(model, "head", None)
    names = list(getattr(head, "output_names", ()) or ())
    if len(names) == n_outputs:
        return names
    return ["output"] if n_outputs == 1 else [f"output{i}" for i in range(n_outputs)]


def check_input_size(input_size: tuple[int, int]) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in input_size)
    except (TypeError, ValueError):
        raise NpuqError(f"input_size {input_size!r}: expected (height, width)") from None
    if h <= 0 or w <= 0:
        raise NpuqError(f"input_size {input_size!r}: height and width must be positive")
    return h, w


def example_input(input_size: tuple[int, int]) -> torch.Tensor:
    """A fixed RGB image in [0, 1] for tracing (the values do not shape the graph)."""
    h, w = check_input_size(input_size)
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0))


def count_outputs(model: nn.Module, rgb: torch.Tensor) -> int:
    with torch.no_grad():
        out = model(rgb)
    if isinstance(out, torch.Tensor):
        return 1
    if isinstance(out, tuple | list) and all(isinstance(t, torch.Tensor) for t in out):
        return len(out)
    raise NpuqError(f"{type(model).__name__}: eval forward must return a Tensor or a tuple of Tensors")


def trace_to_onnx(model: nn.Module, rgb: torch.Tensor, output_names: list[str],
                  path: Path, input_name: str = INPUT_NAME) -> onnx.ModelProto:
    """Run the TorchScript exporter in memory; ``path`` only names the target in error messages."""
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (rgb,), buffer, input_names=[input_name], output_names=output_names,
                              opset_version=OPSET, do_constant_folding=True, dynamo=False)
    except NpuqError:
        raise
    except Exception as exc:  # the exporter raises many types; the user needs one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise NpuqError(f"{path}: ONNX export of {type(model).__name__} failed: {first}") from None
    return onnx.load_from_string(buffer.getvalue())


def check_onnx(proto: onnx.ModelProto, path: str | Path) -> None:
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise NpuqError(f"{path}: invalid ONNX graph: {str(exc).strip().splitlines()[0]}") from None


def resolve_output_names(model: nn.Module, rgb: torch.Tensor, output_names: list[str] | None,
                         path: Path) -> list[str]:
    n_outputs = count_outputs(model, rgb)
    if output_names is None:
        return default_output_names(model, n_outputs)
    names = list(output_names)
    if len(names) != n_outputs or len(set(names)) != len(names) or INPUT_NAME in names:
        raise NpuqError(f"{path}: output_names {names} must be {n_outputs} distinct names other than "
                        f"{INPUT_NAME!r}")
    return names


def export_float_onnx(model: nn.Module, input_size: tuple[int, int], path: str | Path,
                      output_names: list[str] | None = None, force: bool = False) -> Path:
    """Export the float model (eval mode) to ONNX.

    Input ``rgb`` [1,3,H,W] float32 in [0,1] (the model normalises inside); outputs named
    ``output_names``, else after ``model.head.output_names``. Opset 17, checked with onnx.checker,
    written atomically; an existing file is kept unless ``force``.
    """
    path = check_writable(path, force)
    rgb = example_input(input_size)
    with eval_mode(model):
        names = resolve_output_names(model, rgb, output_names, path)
        proto = trace_to_onnx(model, rgb, names, path)
    return save_onnx(proto, path, force)


def save_onnx(proto: onnx.ModelProto, path: Path, force: bool) -> Path:
    """Check the graph, then write it atomically."""
    check_onnx(proto, path)
    return atomic_write(path, lambda tmp: onnx.save(proto, str(tmp)), force)


# --------------------------------------------------------------------------------------------------
# QDQ export of a QuantSim
# --------------------------------------------------------------------------------------------------

QDQ_FORMAT = "npuq-qdq/1"
# Ops that only move values: their output lies on the grid of their input.
VALUE_PRESERVING_OPS = ("Pad", "MaxPool", "Reshape", "Transpose", "Identity", "Squeeze", "Unsqueeze",
                        "Flatten", "Slice", "Resize")
# Producers that ONNX Runtime fuses with a following QuantizeLinear into one integer kernel.
FUSABLE_PRODUCERS = ("Conv", "Add")
# How the TorchScript exporter scopes the nodes of the simulator's activation quantizer modules
# (``QuantSim.graph_module.npuq_act_quant_<i>``, see npuq.quant.graph.insert_quantizers).
ACT_SCOPE = re.compile(r"^/graph_module/(npuq_act_quant_\d+)/(.+)$")
SIM_PARAM_PREFIX = "graph_module."


@dataclass
class Graph:
    """A flat, editable view of an ONNX graph: nodes in topological order and named constant tensors."""

    nodes: list[onnx.NodeProto]
    consts: dict[str, np.ndarray]
    used_names: set[str] = field(default_factory=set)

    @classmethod
    def from_proto(cls, proto: onnx.ModelProto) -> Graph:
        consts = {init.name: numpy_helper.to_array(init) for init in proto.graph.initializer}
        nodes = []
        for node in proto.graph.node:
            if node.op_type == "Constant":
                consts[node.output[0]] = constant_value(node)
            else:
                nodes.append(node)
        names = set(consts) | {n for node in nodes for n in [*node.input, *node.output, node.name]}
        return cls(nodes, consts, names | {i.name for i in proto.graph.input})

    def producer(self, tensor: str) -> onnx.NodeProto | None:
        return next((node for node in self.nodes if tensor in node.output), None)

    def consumers(self, tensor: str) -> list[onnx.NodeProto]:
        return [node for node in self.nodes if tensor in node.input]

    def fresh(self, base: str) -> str:
        """A tensor or node name not used yet, ``base`` itself when possible."""
        name, i = base, 0
        while name in self.used_names:
            i += 1
            name = f"{base}_{i}"
        self.used_names.add(name)
        return name

    def add_const(self, base: str, value: np.ndarray) -> str:
        name = self.fresh(base)
        self.consts[name] = value
        return name

    def rename(self, old: str, new: str) -> str:
        """Rename a tensor everywhere (producer, readers, constants) to ``new`` or, when taken, a variant."""
        if old == new:
            return new
        new = self.fresh(new)
        if old in self.consts:
            self.consts[new] = self.consts.pop(old)
        for node in self.nodes:
            node.input[:] = [new if name == old else name for name in node.input]
            node.output[:] = [new if name == old else name for name in node.output]
        return new

    def insert_after(self, anchor: onnx.NodeProto, new_nodes: list[onnx.NodeProto]) -> None:
        index = next(i for i, node in enumerate(self.nodes) if node is anchor)
        self.nodes[index + 1:index + 1] = new_nodes

    def insert_before(self, anchor: onnx.NodeProto, new_nodes: list[onnx.NodeProto]) -> None:
        index = next(i for i, node in enumerate(self.nodes) if node is anchor)
        self.nodes[index:index] = new_nodes

    def to_proto(self, proto: onnx.ModelProto) -> onnx.ModelProto:
        """``proto`` with this graph's nodes and only the constants they still read."""
        graph = proto.graph
        used = {n for node in self.nodes for n in node.input} | {o.name for o in graph.output}
        del graph.node[:]
        graph.node.extend(self.nodes)
        del graph.initializer[:]
        graph.initializer.extend(numpy_helper.from_array(value, name)
                                 for name, value in self.consts.items() if name in used)
        del graph.value_info[:]
        return proto


def constant_value(node: onnx.NodeProto) -> np.ndarray:
    """The tensor a Constant node produces (the TorchScript exporter uses the ``value`` attribute)."""
    attr = node.attribute[0]
    if attr.name == "value":
        return numpy_helper.to_array(attr.t)
    return np.asarray(helper.get_attribute_value(attr))


def attribute(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def evaluate_node(node: onnx.NodeProto, consts: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run one node on constant inputs with the ONNX reference implementation (opset 17 semantics)."""
    feeds = {name: consts[name] for name in node.input if name}
    return [np.asarray(v) for v in ReferenceEvaluator(node, opsets={"": OPSET}).run(None, feeds)]


def quantize_constant(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int) -> np.ndarray:
    """QuantizeLinear of a constant with torch's fake-quant arithmetic, so the integers are the simulator's.

    Torch multiplies by the float32 reciprocal of the scale where ONNX divides; at an exact tie the two can
    round apart, so the integers are read back from torch's own fake-quant output.
    """
    dtype = zero_point.dtype
    qmin, qmax = int(np.iinfo(dtype).min), int(np.iinfo(dtype).max)
    xt = torch.tensor(np.asarray(x, dtype=np.float32))
    st = torch.tensor(np.asarray(scale, dtype=np.float32))
    zt = torch.tensor(np.asarray(zero_point).astype(np.int32))
    shape = [1] * xt.dim()
    if st.numel() == 1:
        fq = torch.fake_quantize_per_tensor_affine(xt, float(st.reshape(())), int(zt.reshape(())), qmin, qmax)
    else:
        fq = torch.fake_quantize_per_channel_affine(xt, st.reshape(-1), zt.reshape(-1), axis, qmin, qmax)
        shape[axis] = -1
    q = torch.round(fq / st.reshape(shape)) + zt.reshape(shape)
    return q.clamp(qmin, qmax).numpy().astype(dtype)


def keep_unfolded(node: onnx.NodeProto, graph: Graph) -> bool:
    """Constant-input nodes that stay in the graph so the stored types are the NPU's.

    A DequantizeLinear that feeds only Conv weights keeps the weight int8 for ONNX Runtime's QDQ fusion;
    a Cast of an FP16 constant back to float keeps an FP16 layer's weights stored as FP16.
    """
    if node.op_type == "DequantizeLinear":
        users = graph.consumers(node.output[0])
        return bool(users) and all(u.op_type == "Conv" and u.input[1] == node.output[0] for u in users)
    if node.op_type == "Cast":
        to_float = attribute(node, "to") == onnx.TensorProto.FLOAT
        return to_float and graph.consts[node.input[0]].dtype == np.float16
    return False


def fold_constants(graph: Graph) -> None:
    """Evaluate every node whose inputs are all constants (the simulator's weight and bias arithmetic).

    QuantizeLinear of a constant becomes an int8/uint8 constant (``<weight>_quantized``); the
    DequantizeLinear after it stays.
    """
    kept = []
    for node in graph.nodes:
        inputs = [name for name in node.input if name]
        if not all(name in graph.consts for name in inputs) or keep_unfolded(node, graph):
            kept.append(node)
            continue
        if node.op_type == "QuantizeLinear":
            x, scale, zero_point = (graph.consts[name] for name in node.input)
            values = [quantize_constant(x, scale, zero_point, attribute(node, "axis", 1))]
            if is_parameter_name(node.input[0]):
                graph.rename(node.output[0], node.input[0] + "_quantized")
        else:
            values = evaluate_node(node, graph.consts)
        graph.consts.update(zip(node.output, values, strict=True))
    graph.nodes = kept


def is_parameter_name(name: str) -> bool:
    """Initializers the exporter named after a module parameter (``graph_module.conv1.weight``)."""
    return not name.startswith(("/", "onnx::")) and "." in name


def is_value_preserving(node: onnx.NodeProto, graph: Graph) -> bool:
    """Whether every output value of ``node`` is one of its input values (so it stays on their grid)."""
    if node.op_type not in VALUE_PRESERVING_OPS:
        return False
    if node.op_type == "Resize":
        return attribute(node, "mode", b"nearest") == b"nearest"
    if node.op_type == "Pad" and attribute(node, "mode", b"constant") == b"constant":
        pad_value = graph.consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        return pad_value is None or float(pad_value) == 0.0
    return True


def input_dequantize(tensor: str, graph: Graph) -> tuple[onnx.NodeProto | None, list[onnx.NodeProto]]:
    """The DequantizeLinear ``tensor`` comes from through value-preserving ops, and those ops (last first)."""
    chain: list[onnx.NodeProto] = []
    node = graph.producer(tensor)
    while node is not None and is_value_preserving(node, graph):
        chain.append(node)
        node = graph.producer(node.input[0])
    if node is not None and node.op_type == "DequantizeLinear" and node.input[1] in graph.consts:
        return node, chain
    return None, chain


def requantize_after(node: onnx.NodeProto, params: list[str], graph: Graph) -> None:
    """Insert QuantizeLinear/DequantizeLinear with ``params`` (scale, zero-point) after ``node``."""
    out = node.output[0]
    quantized, restored = graph.fresh(out + "_requant"), graph.fresh(out + "_dequant")
    for consumer in graph.consumers(out):
        consumer.input[:] = [restored if name == out else name for name in consumer.input]
    graph.insert_after(node, [
        helper.make_node("QuantizeLinear", [out, *params], [quantized], name=graph.fresh(out + "/Q")),
        helper.make_node("DequantizeLinear", [quantized, *params], [restored], name=graph.fresh(out + "/DQ")),
    ])


def layer_base(conv: onnx.NodeProto, weight_dq: onnx.NodeProto) -> str:
    """``<layer>.`` from the conv's int8 weight name (``<layer>.weight_quantized``), else the node name."""
    weight = weight_dq.input[0]
    suffix = "weight_quantized"
    return weight[: -len(suffix)] if weight.endswith(suffix) else conv.name + "."


def integer_convs(graph: Graph, path: Path) -> int:
    """Make every Conv with int8 weights and a quantized input an integer Conv for ONNX Runtime.

    The input must come straight from a DequantizeLinear: after value-preserving ops (the reflection pad
    before a 3x3 conv) a Q/DQ with the input's own scale and zero-point is inserted, which is exact since
    those values already lie on that grid. The float bias becomes an int32 constant with scale s_in * s_w
    (per output channel for per-channel weights) and zero-point 0, plus a DequantizeLinear. A bias that is
    not on that grid (the simulator left it float, e.g. for an FP16 input) stays float. Returns how many
    Convs are integer.
    """
    count = 0
    for conv in [node for node in graph.nodes if node.op_type == "Conv"]:
        weight_dq = graph.producer(conv.input[1])
        input_dq, chain = input_dequantize(conv.input[0], graph)
        if weight_dq is None or weight_dq.op_type != "DequantizeLinear" or input_dq is None:
            continue
        if chain:
            requantize_after(chain[0], list(input_dq.input[1:]), graph)
        base = layer_base(conv, weight_dq)
        graph.rename(weight_dq.input[1], base + "weight_scale")
        graph.rename(weight_dq.input[2], base + "weight_zero_point")
        if len(conv.input) > 2 and conv.input[2]:
            bias_scale = graph.consts[input_dq.input[1]].astype(np.float32) * \
                graph.consts[weight_dq.input[1]].astype(np.float32)
            if not integer_bias(graph, conv, bias_scale, base, path):
                continue
        count += 1
    return count


def integer_bias(graph: Graph, conv: onnx.NodeProto, scale: np.ndarray, base: str, path: Path) -> bool:
    """Store the conv's bias as int32 + DequantizeLinear; False (bias left alone) when it is not a
    constant on the grid."""
    bias = graph.consts.get(conv.input[2])
    if bias is None:  # computed at run time: nothing to store
        return False
    full_scale = np.broadcast_to(scale.reshape(-1), bias.shape).astype(np.float64)
    ints = np.rint(bias.astype(np.float64) / full_scale)
    # The simulator rounded the bias to this grid in float32: anything beyond float error means it did not.
    if np.any(np.abs(ints * full_scale - bias) > 1e-3 * full_scale + 1e-6 * np.abs(bias)):
        return False
    if np.any(np.abs(ints) > np.iinfo(np.int32).max):
        raise NpuqError(f"{path}: the bias of {conv.name} overflows int32 at scale s_in*s_w")
    per_channel = scale.size > 1
    q_name = graph.add_const(base + "bias_quantized", ints.astype(np.int32))
    s_name = graph.add_const(base + "bias_scale", scale.reshape(-1) if per_channel else scale.reshape(()))
    z_name = graph.add_const(base + "bias_zero_point", np.zeros(scale.shape if per_channel else (), np.int32))
    out = graph.fresh(base + "bias_dequantized")
    graph.insert_before(conv, [helper.make_node("DequantizeLinear", [q_name, s_name, z_name], [out],
                                                name=graph.fresh(base + "bias/DQ"), axis=0)])
    conv.input[2] = out
    return True


def split_relu_requant(graph: Graph) -> int:
    """Conv/Add -> Relu -> Q with a zero-point above the grid minimum: quantize before the Relu too.

    ONNX Runtime drops a Relu before Q only when the zero-point is the grid minimum (the Q then clamps at
    0 itself); with a signed grid and zero-point 0 the Relu stays and the Conv runs in float. Quantizing the
    Conv output with the same scale and zero-point first is exact: round and clamp commute with max(., 0)
    on the grid, so Q(relu(y)) = max(Q(y), zp).
    """
    count = 0
    for relu in [node for node in graph.nodes if node.op_type == "Relu"]:
        users = graph.consumers(relu.output[0])
        producer = graph.producer(relu.input[0])
        if len(users) != 1 or users[0].op_type != "QuantizeLinear" or producer is None or \
                producer.op_type not in FUSABLE_PRODUCERS or len(graph.consumers(producer.output[0])) != 1:
            continue
        zero_point = graph.consts.get(users[0].input[2])
        if zero_point is None or int(zero_point.reshape(-1)[0]) == int(np.iinfo(zero_point.dtype).min):
            continue
        requantize_after(producer, list(users[0].input[1:]), graph)
        count += 1
    return count


def one_pair_per_consumer(graph: Graph) -> int:
    """Give every consumer of an int8 activation its own QuantizeLinear/DequantizeLinear pair.

    ONNX Runtime's x86 integer kernels take uint8 activations; it rewrites an int8 Q/DQ pair to uint8
    (zero-point + 128, the same values) only when the Q has a single consumer, so a shared int8 pair keeps
    its consumers in float. Duplicating the pair changes no value. uint8 pairs stay shared: ONNX Runtime
    handles those itself, and a Relu before a uint8 Q is only dropped while the Q is its one consumer.
    """
    count = 0
    for q in [node for node in graph.nodes if node.op_type == "QuantizeLinear"]:
        if graph.consts[q.input[2]].dtype != np.int8:
            continue
        for dq in [node for node in graph.consumers(q.output[0]) if node.op_type == "DequantizeLinear"]:
            for user in graph.consumers(dq.output[0])[1:]:
                # Own copies of scale and zero-point too, or ONNX Runtime's common-subexpression
                # elimination merges the pairs straight back.
                params = [graph.add_const(name + "_copy", graph.consts[name]) for name in q.input[1:]]
                quantized, restored = graph.fresh(q.output[0] + "_copy"), graph.fresh(dq.output[0] + "_copy")
                user.input[:] = [restored if name == dq.output[0] else name for name in user.input]
                graph.insert_after(dq, [
                    helper.make_node("QuantizeLinear", [q.input[0], *params], [quantized],
                                     name=graph.fresh(q.name + "_copy")),
                    helper.make_node("DequantizeLinear", [quantized, *params], [restored],
                                     name=graph.fresh(dq.name + "_copy")),
                ])
                count += 1
    return count


def to_integer_qdq(proto: onnx.ModelProto, path: Path,
                   label: Callable[[Graph], None] | None = None) -> tuple[onnx.ModelProto, dict[str, int]]:
    """Turn a traced fake-quant graph into a QDQ graph ONNX Runtime runs with integer kernels.

    ``label`` may rename tensors once the constants are folded. Returns the model and counts of what was
    done (``integer_convs``, ``float_convs``, ``relu_requantized``, ``pairs_duplicated``).
    """
    graph = Graph.from_proto(proto)
    fold_constants(graph)
    if label is not None:
        label(graph)
    stats = {"integer_convs": integer_convs(graph, path)}
    stats["float_convs"] = sum(node.op_type == "Conv" for node in graph.nodes) - stats["integer_convs"]
    stats["relu_requantized"] = split_relu_requant(graph)
    stats["pairs_duplicated"] = one_pair_per_consumer(graph)
    return graph.to_proto(proto), stats


# -- the simulator's side -----------------------------------------------------------------------------


def check_exportable(sim: nn.Module, path: Path) -> None:
    """ONNX QuantizeLinear (opset 17) stores int8 / uint8 only."""
    quantizers = getattr(sim, "quantizers", None)
    if not isinstance(quantizers, dict):
        raise NpuqError(f"{path}: export_qdq_onnx needs a QuantSim (from simulate_ptq), "
                        f"got {type(sim).__name__}")
    every = [*quantizers.values(), *getattr(sim, "weight_quantizers", {}).values()]
    for q in every:
        if q.active and q.mode == "int" and q.grid.bits != 8:
            raise NpuqError(f"{path}: {q.kind} quantizer {q.name!r} uses a {q.grid.bits}-bit grid; "
                            "ONNX QDQ stores 8-bit integers only")


def label_sim_tensors(graph: Graph, sim: nn.Module) -> None:
    """Name nodes and constants after the simulator's quantizers and layers.

    Activation Q/DQ nodes become ``<quantizer>/QuantizeLinear`` with constants ``<quantizer>.scale`` and
    ``<quantizer>.zero_point``; layer constants lose the ``graph_module.`` prefix
    (``encoder.encoder.conv1.weight_quantized``).
    """
    for node in graph.nodes:
        match = ACT_SCOPE.match(node.name)
        if match is None:
            continue
        quantizer = sim.graph_module.get_submodule(match.group(1)).name
        node.name = graph.fresh(f"{quantizer}/{match.group(2)}")
        if node.op_type == "QuantizeLinear":  # its DequantizeLinear reads the same constants
            graph.rename(node.input[1], f"{quantizer}.scale")
            graph.rename(node.input[2], f"{quantizer}.zero_point")
    for name in [n for n in graph.consts if n.startswith(SIM_PARAM_PREFIX)]:
        graph.rename(name, name[len(SIM_PARAM_PREFIX):])
    store_fp16_layers(graph, sim)


def store_fp16_layers(graph: Graph, sim: nn.Module) -> None:
    """Store the weight and bias of FP16-mode layers as float16 constants + Cast to float.

    The exporter folds the simulator's round-to-FP16 into float32 constants; they are found by value (the
    FP16-rounded weight the simulator uses) and named ``<layer>.weight`` / ``<layer>.bias``.
    """
    readers = {name: node for node in graph.nodes if node.op_type == "Conv"
               for name in node.input[1:] if name in graph.consts}
    for layer_name, layer in getattr(sim, "layers", {}).items():
        if not (layer.weight_quantizer.active and layer.weight_quantizer.mode == "fp16"):
            continue
        with torch.no_grad():
            tensors = layer.quantized_weight_bias()
        for role, tensor in zip(("weight", "bias"), tensors, strict=True):
            if tensor is None:
                continue
            value = tensor.detach().cpu().float().numpy()
            match = next((name for name in readers if graph.consts[name].shape == value.shape
                          and np.array_equal(graph.consts[name], value)), None)
            if match is not None:
                cast_to_float(graph, readers.pop(match), match, f"{layer_name}.{role}")


def cast_to_float(graph: Graph, reader: onnx.NodeProto, const: str, name: str) -> None:
    """Replace float32 constant ``const`` (FP16 values) read by ``reader`` with float16 ``name`` + Cast."""
    half = graph.add_const(name, graph.consts[const].astype(np.float16))
    out = graph.fresh(name + "_float")
    graph.insert_before(reader, [helper.make_node("Cast", [half], [out], name=graph.fresh(name + "/Cast"),
                                                  to=onnx.TensorProto.FLOAT)])
    reader.input[:] = [out if n == const else n for n in reader.input]


def export_qdq_onnx(sim: nn.Module, input_size: tuple[int, int], path: str | Path, force: bool = False,
                    output_names: list[str] | None = None) -> Path:
    """Export a QuantSim as an ONNX QDQ graph with the simulator's exact numbers.

    Every active INT8 activation quantizer becomes a QuantizeLinear/DequantizeLinear pair (int8 for signed
    grids, uint8 for unsigned) with its scale and zero-point; FP16 ones become Cast to float16 and back.
    Conv weights are int8/uint8 constants (per-tensor, or per-channel along axis 0) followed by
    DequantizeLinear; biases int32 constants with scale s_in * s_w and zero-point 0. ONNX Runtime's QDQ
    fusion then runs QLinearConv and friends. ``output_names`` default to ``output`` / ``output0..``
    (the QuantSim does not keep the head's names: pass ``model.head.output_names``).
    """
    path = check_writable(path, force)
    check_exportable(sim, path)
    rgb = example_input(input_size)
    with eval_mode(sim):
        names = resolve_output_names(sim, rgb, output_names, path)
        proto = trace_to_onnx(sim, rgb, names, path)
    proto, stats = to_integer_qdq(proto, path, label=lambda graph: label_sim_tensors(graph, sim))
    profile = getattr(sim, "profile", None)
    helper.set_model_props(proto, {"format": QDQ_FORMAT, "profile": getattr(profile, "name", ""),
                                   **{k: str(v) for k, v in stats.items()}})
    return save_onnx(proto, path, force)
