"""Fuzzing of the importer and the stages after it with mutated ONNX files.

The target (`run_target`) takes the bytes of a file, imports it and, when
the graph is small, quantizes, plans and renders it in ternary and float32
mode. Every input must end in a result or a BonsaiError: any other
exception, a hang or a crash of the interpreter is a bug.

Inputs come from small seed models built here and from a corpus folder.
Mutations change the serialized bytes (bit flips, chunks deleted, duplicated
or replaced, truncation) or the graph (op types, attributes, inputs, shapes,
initializer data, opset). A campaign
(`python -m bonsai_mcu.fuzz --minutes 10`) runs the target in a child
process with a memory limit, restarts it after a crash or a hang, and saves
inputs that found a bug or a new outcome into the corpus folder.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import random
import re
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from . import BonsaiError

log = logging.getLogger(__name__)

# Graphs with more activation elements than this are imported but not compiled,
# so calibration (32 float runs) stays fast.
COMPILE_MAX_ELEMENTS = 200_000

# A campaign's child process stops an input after this many seconds (a hang)
# and may allocate at most this many bytes (larger allocations raise MemoryError).
HANG_SECONDS = 20.0
MEMORY_LIMIT = 3 << 30

# Outcomes decided before the importer's own code runs (protobuf, onnx.checker,
# shape inference): their inputs are counted but not kept in the corpus.
SHALLOW_OUTCOMES = ("rejected: FILE: not a valid ONNX file", "rejected: FILE: ONNX checker rejected",
                    "rejected: FILE: shape inference failed")

OP_TYPES = [
    "Conv", "Gemm", "MatMul", "Add", "Relu", "Clip", "Sigmoid", "Tanh", "LeakyRelu", "HardSigmoid", "HardSwish",
    "Elu", "Softplus", "Softmax", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Flatten",
    "Reshape", "Transpose", "Squeeze", "Unsqueeze", "BatchNormalization", "Dropout", "Identity", "Constant",
    "Shape", "Concat", "Gather", "Mul", "Sub", "Div", "QuantizeLinear", "DequantizeLinear", "Pad", "Slice",
    "ConstantOfShape", "Range", "Tile", "Expand", "Cast", "ReduceMean", "Resize", "NoSuchOp",
]

ATTRIBUTE_NAMES = [
    "kernel_shape", "strides", "pads", "dilations", "group", "auto_pad", "ceil_mode", "count_include_pad",
    "storage_order", "axis", "axes", "perm", "alpha", "beta", "transA", "transB", "min", "max", "epsilon",
    "allowzero", "training_mode", "keepdims", "to", "value", "start", "end", "mode",
]


# -- seeds -----------------------------------------------------------------------


def _model(nodes, inputs, outputs, initializers, opset: int = 13) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "seed", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _tensor(name: str, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _constant(name: str, array) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def seed_models() -> list[onnx.ModelProto]:
    """Small valid models that together use every op the importer handles."""
    rng = np.random.default_rng(0)

    def weights(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    cnn = _model(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1], strides=[1, 1]),
         helper.make_node("BatchNormalization", ["c", "g", "beta", "mean", "var"], ["n"], name="bn"),
         helper.make_node("Relu", ["n"], ["r"], name="relu"),
         helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
         helper.make_node("Conv", ["p", "w2"], ["d"], name="depthwise", group=4, kernel_shape=[3, 3],
                          pads=[1, 1, 1, 1]),
         helper.make_node("Add", ["d", "p"], ["s"], name="residual"),
         helper.make_node("GlobalAveragePool", ["s"], ["gap"], name="gap"),
         helper.make_node("Flatten", ["gap"], ["f"], name="flatten"),
         helper.make_node("Gemm", ["f", "fc", "fcb"], ["logits"], name="fc", transB=1),
         helper.make_node("Softmax", ["logits"], ["y"], name="softmax")],
        [_tensor("x", [1, 3, 8, 8])], [_tensor("y", [1, 5])],
        [_constant("w", weights(4, 3, 3, 3)), _constant("b", weights(4)), _constant("g", weights(4)),
         _constant("beta", weights(4)), _constant("mean", weights(4)), _constant("var", np.abs(weights(4)) + 0.5),
         _constant("w2", np.sign(weights(4, 1, 3, 3))), _constant("fc", weights(5, 4)), _constant("fcb", weights(5))])

    mlp = _model(
        [helper.make_node("MatMul", ["x", "m"], ["h"], name="matmul"),
         helper.make_node("Add", ["h", "hb"], ["hb_out"], name="bias"),
         helper.make_node("Clip", ["hb_out", "lo", "hi"], ["c"], name="clip"),
         helper.make_node("Sigmoid", ["c"], ["s"], name="sigmoid"),
         helper.make_node("Reshape", ["s", "shape"], ["r"], name="reshape"),
         helper.make_node("Transpose", ["r"], ["t"], name="transpose", perm=[0, 2, 1]),
         helper.make_node("Unsqueeze", ["t", "axes"], ["u"], name="unsqueeze"),
         helper.make_node("Squeeze", ["u", "axes"], ["q"], name="squeeze"),
         helper.make_node("Tanh", ["q"], ["y"], name="tanh")],
        [_tensor("x", [1, 6])], [_tensor("y", [1, 4, 2])],
        [_constant("m", weights(6, 8)), _constant("hb", weights(8)), _constant("lo", np.float32(-1.0)),
         _constant("hi", np.float32(1.0)), _constant("shape", np.array([1, 2, 4], np.int64)),
         _constant("axes", np.array([0], np.int64))])

    conv1d = _model(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv1d", kernel_shape=[3], dilations=[2],
                          auto_pad="SAME_UPPER"),
         helper.make_node("AveragePool", ["c"], ["p"], name="avg", kernel_shape=[3], pads=[1, 1],
                          count_include_pad=1, ceil_mode=1),
         helper.make_node("LeakyRelu", ["p"], ["l"], name="leaky", alpha=0.1),
         helper.make_node("Shape", ["l"], ["shape"], name="shape"),
         helper.make_node("Reshape", ["l", "shape"], ["r"], name="reshape_same"),
         helper.make_node("Dropout", ["r"], ["d"], name="dropout"),
         helper.make_node("Identity", ["d"], ["i"], name="identity"),
         helper.make_node("HardSwish", ["i"], ["y"], name="hardswish")],
        [_tensor("x", [1, 2, 10])], [_tensor("y", [1, 3, 10])],
        [_constant("w", weights(3, 2, 3))], opset=14)

    folded = _model(
        [helper.make_node("Constant", [], ["k"], name="const", value=_constant("k", np.float32([2.0, 3.0]))),
         helper.make_node("Concat", ["k", "k"], ["kk"], name="concat", axis=0),
         helper.make_node("Gemm", ["x", "b", "kk"], ["g"], name="gemm", alpha=0.5, beta=2.0),
         helper.make_node("Elu", ["g"], ["e"], name="elu"),
         helper.make_node("Softplus", ["e"], ["y"], name="softplus")],
        [_tensor("x", ["batch", 3])], [_tensor("y", ["batch", 4])],
        [_constant("b", weights(3, 4))])
    return [cnn, mlp, conv1d, folded]


# -- mutations ---------------------------------------------------------------------


def _interesting_int(rng: random.Random) -> int:
    return rng.choice([0, 1, 2, 3, -1, -2, 7, 64, 255, 2 ** 15, 2 ** 31 - 1, -(2 ** 31), 2 ** 40, rng.randint(-9, 9)])


def _interesting_float(rng: random.Random) -> float:
    return rng.choice([0.0, -0.0, 1.0, -1.0, 0.5, 1e-30, 1e30, 3.4e38, float("inf"), float("-inf"), float("nan"),
                       rng.uniform(-10, 10)])


def _random_attribute(rng: random.Random, name: str) -> onnx.AttributeProto:
    kind = rng.choice(["int", "ints", "float", "floats", "string", "tensor"])
    if kind == "int":
        return helper.make_attribute(name, _interesting_int(rng))
    if kind == "ints":
        return helper.make_attribute(name, [_interesting_int(rng) for _ in range(rng.randint(0, 6))],
                                     attr_type=onnx.AttributeProto.INTS)
    if kind == "float":
        return helper.make_attribute(name, _interesting_float(rng))
    if kind == "floats":
        return helper.make_attribute(name, [_interesting_float(rng) for _ in range(rng.randint(1, 4))])
    if kind == "string":
        return helper.make_attribute(name, rng.choice(["SAME_UPPER", "SAME_LOWER", "VALID", "NOTSET", "", "x"]))
    shape = [rng.randint(0, 3) for _ in range(rng.randint(0, 3))]
    return helper.make_attribute(name, _constant(name, np.full(shape, _interesting_float(rng), np.float32)))


def _tweak_attribute(rng: random.Random, attribute: onnx.AttributeProto) -> None:
    """Change an attribute's value but keep its type, so the model more often passes the checker."""
    if attribute.type == onnx.AttributeProto.INT:
        attribute.i = rng.randint(-2, 6)
    elif attribute.type == onnx.AttributeProto.INTS:
        length = max(0, len(attribute.ints) + rng.choice([-1, 0, 0, 1]))
        del attribute.ints[:]
        attribute.ints.extend(rng.randint(-1, 5) for _ in range(length))
    elif attribute.type == onnx.AttributeProto.FLOAT:
        attribute.f = _interesting_float(rng)


def _mutate_node(rng: random.Random, model: onnx.ModelProto) -> None:
    graph = model.graph
    if not graph.node:
        return
    node = rng.choice(graph.node)
    names = [v.name for v in graph.input] + [i.name for i in graph.initializer] + [o for n in graph.node
                                                                                     for o in n.output]
    choice = rng.randrange(10)
    if choice >= 8 and node.attribute:
        _tweak_attribute(rng, rng.choice(node.attribute))
    elif choice == 0:
        node.op_type = rng.choice(OP_TYPES)
    elif choice == 1:
        del graph.node[rng.randrange(len(graph.node))]
    elif choice == 2 and node.input:
        node.input[rng.randrange(len(node.input))] = rng.choice(names + ["", "missing"])
    elif choice == 3:
        node.input.append(rng.choice(names + [""]))
    elif choice == 4 and node.attribute:
        del node.attribute[rng.randrange(len(node.attribute))]
    elif choice == 5:
        name = rng.choice(ATTRIBUTE_NAMES + [a.name for a in node.attribute])
        kept = [a for a in node.attribute if a.name != name]
        del node.attribute[:]
        node.attribute.extend(kept + [_random_attribute(rng, name)])
    elif choice == 6:
        node.output.append(rng.choice(["extra", names[-1] if names else "y"]))
    else:
        graph.node.add().CopyFrom(node)


def _mutate_value_info(rng: random.Random, model: onnx.ModelProto) -> None:
    values = list(model.graph.input) + list(model.graph.output)
    if not values:
        return
    value = rng.choice(values)
    tensor_type = value.type.tensor_type
    choice = rng.randrange(5)
    dims = tensor_type.shape.dim
    if choice == 0 and dims:
        dims[rng.randrange(len(dims))].dim_value = _interesting_int(rng) if rng.random() < 0.5 else rng.randint(0, 9)
    elif choice == 1 and dims:
        dims[rng.randrange(len(dims))].dim_param = rng.choice(["n", "batch", ""])
    elif choice == 2:
        dims.add().dim_value = rng.randint(1, 4)
    elif choice == 3 and dims:
        del dims[rng.randrange(len(dims))]
    else:
        tensor_type.elem_type = rng.choice([TensorProto.FLOAT, TensorProto.INT64, TensorProto.UINT8,
                                            TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BOOL, 0])


def _mutate_initializer(rng: random.Random, model: onnx.ModelProto) -> None:
    graph = model.graph
    if not graph.initializer:
        return
    index = rng.randrange(len(graph.initializer))
    tensor = graph.initializer[index]
    try:
        array = numpy_helper.to_array(tensor)
    except Exception:  # an earlier mutation may have broken the tensor: replace it whole
        array = np.zeros(1, np.float32)
    choice = rng.randrange(6)
    if choice == 0 and array.size:
        flat = array.astype(np.float64).reshape(-1)
        flat[rng.randrange(flat.size)] = _interesting_float(rng)
        with np.errstate(all="ignore"):
            array = flat.astype(array.dtype if array.dtype.kind == "f" else np.float32).reshape(array.shape)
    elif choice == 1:
        array = np.zeros([rng.randint(0, 4) for _ in range(rng.randint(0, 5))], rng.choice(
            [np.float32, np.int64, np.int8, np.float64]))
    elif choice == 2:
        del tensor.dims[:]
        tensor.dims.extend([rng.randint(0, 5) for _ in range(rng.randint(0, 4))])
        return
    elif choice == 3:
        tensor.data_type = rng.choice([TensorProto.FLOAT, TensorProto.INT64, TensorProto.STRING, 0, 99])
        return
    elif choice == 4:
        del graph.initializer[index]
        return
    else:
        array = array.reshape(-1) if array.size else array
    replacement = numpy_helper.from_array(np.asarray(array), tensor.name)
    graph.initializer[index].CopyFrom(replacement)


def mutate_graph(rng: random.Random, model: onnx.ModelProto, rounds: int | None = None) -> onnx.ModelProto:
    """Return a copy of `model` with a few random structural changes (the result may be invalid)."""
    mutated = onnx.ModelProto()
    mutated.CopyFrom(model)
    for _ in range(rounds if rounds is not None else rng.randint(1, 4)):
        kind = rng.randrange(10)
        try:
            if kind < 4:
                _mutate_node(rng, mutated)
            elif kind < 6:
                _mutate_value_info(rng, mutated)
            elif kind < 9:
                _mutate_initializer(rng, mutated)
            else:
                del mutated.opset_import[:]
                mutated.opset_import.append(helper.make_opsetid("", rng.choice([1, 6, 7, 9, 11, 12, 13, 17, 21, 25])))
        except Exception:  # noqa: BLE001 - a model broken by byte mutations can defeat a graph mutation; skip it
            continue
    return mutated


def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    """Return `data` with a few random byte-level changes."""
    buffer = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        if not buffer:
            buffer.extend(rng.randbytes(rng.randint(1, 16)))
            continue
        position = rng.randrange(len(buffer))
        kind = rng.randrange(6)
        if kind == 0:
            buffer[position] ^= 1 << rng.randrange(8)
        elif kind == 1:
            buffer[position] = rng.choice([0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)])
        elif kind == 2:
            del buffer[position:position + rng.randint(1, 32)]
        elif kind == 3:
            chunk = buffer[position:position + rng.randint(1, 32)]
            buffer[position:position] = chunk
        elif kind == 4:
            del buffer[rng.randrange(len(buffer) + 1):]
        else:
            buffer[position:position] = rng.randbytes(rng.randint(1, 8))
    return bytes(buffer)


def mutate(rng: random.Random, data: bytes) -> bytes:
    """Return a mutated copy of the ONNX file bytes `data`: the graph, the bytes, or both."""
    # Byte mutations mostly yield files protobuf cannot parse: give graph mutations 3 in 5.
    kind = rng.randrange(5)
    if kind < 4:
        try:
            model = onnx.ModelProto.FromString(data)
        except Exception:  # the bytes do not parse: fall back to byte mutations
            return mutate_bytes(rng, data)
        data = mutate_graph(rng, model).SerializeToString()
    if kind > 2:
        data = mutate_bytes(rng, data)
    return data


# -- the target ------------------------------------------------------------------


def run_target(data: bytes, workdir: Path) -> str:
    """Import (and when small, compile) the ONNX file `data`; return the outcome.

    Returns "imported", "compiled" or "rejected: <message>"; any exception
    other than BonsaiError propagates, because it is a bug.
    """
    from .codegen import render
    from .importer import import_onnx
    from .plan import plan_graph
    from .quantize import QuantOptions, quantize
    from .targets import load_target

    path = workdir / "fuzz.onnx"
    path.write_bytes(data)
    try:
        graph = import_onnx(path, "fuzz")
        if sum(tensor.size for tensor in graph.tensors.values()) > COMPILE_MAX_ELEMENTS:
            return "imported"
        target = load_target("host")
        for weights in ("ternary", "float32"):
            graph = import_onnx(path, "fuzz")
            quantize(graph, QuantOptions(weights=weights), None)
            render(graph, plan_graph(graph, max(target.alignment, 4)), target, graph.name)
    except BonsaiError as error:
        return "rejected: " + str(error).replace(str(path), "FILE")
    return "compiled"


def outcome_signature(outcome: str) -> str:
    """Reduce an outcome to its kind: numbers and quoted names removed, first clause only."""
    text = re.sub(r"'[^']*'", "'_'", outcome)
    text = re.sub(r"-?\d+(\.\d+)?(e-?\d+)?", "N", text)
    text = re.sub(r"\[[^\]]*\]", "[_]", text)
    return text.split(";")[0][:100]


# -- a campaign ------------------------------------------------------------------


def _worker(connection, memory_limit: int) -> None:
    import resource
    import warnings

    resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
    warnings.simplefilter("ignore")
    logging.getLogger("bonsai_mcu").setLevel(logging.CRITICAL)
    workdir = Path(tempfile.mkdtemp(prefix="bonsai-fuzz-"))
    while True:
        data = connection.recv_bytes()
        try:
            connection.send(("ok", run_target(data, workdir)))
        except BaseException:  # every other exception is a finding, reported with its traceback
            connection.send(("bug", traceback.format_exc(limit=-6)))


@dataclass
class Campaign:
    corpus: Path
    seed: int = 0
    hang_seconds: float = HANG_SECONDS
    executions: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    bugs: list[tuple[str, str]] = field(default_factory=list)
    saved: int = 0

    def __post_init__(self):
        self.rng = random.Random(self.seed)
        self.pool = [model.SerializeToString() for model in seed_models()]
        if self.corpus.is_dir():
            self.pool += [path.read_bytes() for path in sorted(self.corpus.glob("*.onnx"))]
        self.process = None

    def start(self) -> None:
        context = multiprocessing.get_context("fork")
        self.connection, child = context.Pipe()
        self.process = context.Process(target=_worker, args=(child, MEMORY_LIMIT), daemon=True)
        self.process.start()

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.join()
            self.process = None

    def save(self, data: bytes, kind: str) -> Path:
        self.corpus.mkdir(parents=True, exist_ok=True)
        path = self.corpus / f"{kind}-{hashlib.sha1(data).hexdigest()[:12]}.onnx"
        if not path.exists():
            path.write_bytes(data)
            self.saved += 1
        return path

    def run_one(self, data: bytes) -> None:
        if self.process is None:
            self.start()
        self.connection.send_bytes(data)
        self.executions += 1
        if not self.connection.poll(self.hang_seconds):
            self.stop()
            self.bugs.append(("hang", f"no result after {self.hang_seconds:g} s"))
            self.save(data, "hang")
            return
        try:
            status, detail = self.connection.recv()
        except EOFError:
            code = self.process.exitcode if self.process else None
            self.stop()
            self.bugs.append(("crash", f"the target process died (exit code {code})"))
            self.save(data, "crash")
            return
        if status == "bug":
            self.bugs.append(("traceback", detail))
            self.save(data, "traceback")
            return
        signature = outcome_signature(detail)
        if signature not in self.outcomes:
            self.outcomes[signature] = 0
            if not detail.startswith(SHALLOW_OUTCOMES):
                self.pool.append(data)
                self.save(data, "outcome")
        self.outcomes[signature] += 1

    def run(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline:
                self.run_one(mutate(self.rng, self.rng.choice(self.pool)))
        finally:
            self.stop()


@click.command(epilog="""\b
Examples:
  python -m bonsai_mcu.fuzz --minutes 10
  python -m bonsai_mcu.fuzz --minutes 1 --seed 7 --corpus /tmp/corpus
""")
@click.option("--minutes", type=float, default=10.0, show_default=True, help="Length of the campaign.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the mutation generator.")
@click.option("--corpus", type=click.Path(file_okay=False), default="tests/fuzz_corpus", show_default=True,
              help="Folder of seed inputs; inputs with a bug or a new outcome are saved into it.")
def main(minutes, seed, corpus):
    """Fuzz the importer and compiler with mutated ONNX files; exit 1 if any input raised, hung or crashed."""
    campaign = Campaign(Path(corpus), seed)
    started = time.monotonic()
    campaign.run(minutes * 60.0)
    elapsed = time.monotonic() - started
    click.echo(f"{campaign.executions} inputs in {elapsed:.0f} s ({campaign.executions / elapsed:.1f}/s), "
               f"{len(campaign.outcomes)} distinct outcomes, {len(campaign.bugs)} bugs, "
               f"{campaign.saved} inputs saved to {corpus}")
    for signature, count in sorted(campaign.outcomes.items(), key=lambda item: -item[1])[:40]:
        click.echo(f"{count:7} {signature}")
    for kind, detail in campaign.bugs:
        click.echo(f"\n{kind}:\n{detail}")
    raise SystemExit(1 if campaign.bugs else 0)


if __name__ == "__main__":
    main()
