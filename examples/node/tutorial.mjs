// The GradOperation tutorial from Node, written from docs/wire-format.md and the .proto files only.
//
//   npm ci --prefix examples/node
//   GOOGLEAPIS_PROTO_DIR=DIR node examples/node/tutorial.mjs HOST:PORT
//
// DIR is any directory holding google/rpc/status.proto and google/rpc/error_details.proto: a
// googleapis checkout, or the site-packages of Python's googleapis-common-protos, e.g.
//   python3 -c 'import google.rpc.status_pb2 as s, pathlib; print(pathlib.Path(s.__file__).parents[2])'
//
// Prints one JSON object: the ops checked, the tutorial's gradients, an ONNX model's gradients, and the status of a
// deliberately bad graph (with the google.rpc.BadRequest field violations from its trailer).
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import grpc from '@grpc/grpc-js';
import protoLoader from '@grpc/proto-loader';
import protobuf from 'protobufjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const PROTO_DIR = path.resolve(here, '..', '..', 'proto');
const DEADLINE_MS = 30_000;

function fail(message) {
  console.error(`tutorial.mjs: ${message}`);
  process.exit(2);
}

const target = process.argv[2];
if (!target) fail('usage: node tutorial.mjs HOST:PORT');
const googleapis = process.env.GOOGLEAPIS_PROTO_DIR;
if (!googleapis || !existsSync(path.join(googleapis, 'google', 'rpc', 'status.proto'))) {
  fail('set GOOGLEAPIS_PROTO_DIR to a directory holding google/rpc/status.proto and error_details.proto ' +
       "(a googleapis checkout, or: python3 -c 'import google.rpc.status_pb2 as s, pathlib; " +
       "print(pathlib.Path(s.__file__).parents[2])')");
}
const includeDirs = [PROTO_DIR, googleapis];

// ---- the service, loaded at run time ------------------------------------------------------------
const packageDefinition = protoLoader.loadSync('gradserve/v1/service.proto', {
  includeDirs,
  keepCase: true,   // field names as in the .proto and the docs (network_id, get_by_list, ...)
  longs: Number,    // int64 shapes and counters as JS numbers
  enums: String,    // DATA_TYPE_FLOAT32 rather than 3
  defaults: true,
  oneofs: true,     // a oneof's set member is named by a virtual field (TensorTree.kind)
});
const v1 = grpc.loadPackageDefinition(packageDefinition).gradserve.v1;
const client = new v1.Gradient(target, grpc.credentials.createInsecure());

// google.rpc.Status and BadRequest, for the grpc-status-details-bin trailer.
const rpcRoot = new protobuf.Root();
rpcRoot.resolvePath = (_origin, target) => {
  for (const dir of includeDirs) {
    const p = path.join(dir, target);
    if (existsSync(p)) return p;
  }
  return target;  // google/protobuf/*.proto are built into protobufjs
};
rpcRoot.loadSync(['google/rpc/status.proto', 'google/rpc/error_details.proto'], { keepCase: true });
const RpcStatus = rpcRoot.lookupType('google.rpc.Status');
const statusName = Object.fromEntries(Object.entries(grpc.status).map(([name, code]) => [code, name]));

function call(method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, { deadline: Date.now() + DEADLINE_MS }, (err, response) =>
      (err ? reject(err) : resolve(response)));
  });
}

// ---- tensors: raw little-endian bytes, row-major ------------------------------------------------
function shapeOf(nested) {
  const shape = [];
  for (let v = nested; Array.isArray(v); v = v[0]) shape.push(v.length);
  return shape;
}

function tensor(nested, dtype = 'DATA_TYPE_FLOAT32') {
  const values = [nested].flat(Infinity);
  const Typed = { DATA_TYPE_FLOAT32: Float32Array, DATA_TYPE_FLOAT64: Float64Array }[dtype];
  // Float32Array/Float64Array use the host's byte order: little-endian on every common machine.
  return { dtype, shape: shapeOf(nested), data: Buffer.from(new Typed(values).buffer) };
}

const READERS = {
  DATA_TYPE_FLOAT32: [4, (b, o) => b.readFloatLE(o)],
  DATA_TYPE_FLOAT64: [8, (b, o) => b.readDoubleLE(o)],
};

function decodeTensor(t) {
  const [size, read] = READERS[t.dtype] ?? fail(`no reader for ${t.dtype}`);
  const shape = t.shape.map(Number);
  const flat = [];
  for (let o = 0; o < t.data.length; o += size) flat.push(read(t.data, o));
  const count = shape.reduce((a, b) => a * b, 1);
  if (flat.length !== count) fail(`tensor of shape [${shape}] has ${flat.length} elements`);
  // Re-nest row-major: split the flat list by the innermost dimension first.
  let value = flat;
  for (const d of shape.slice(1).reverse()) {
    const rows = [];
    for (let i = 0; i < value.length; i += d) rows.push(value.slice(i, i + d));
    value = rows;
  }
  return { dtype: t.dtype, shape, value: shape.length === 0 ? value[0] : value };
}

function decodeTree(tree) {
  if (tree.kind === 'tensor') return decodeTensor(tree.tensor);
  if (tree.kind === 'tuple') return tree.tuple.items.map(decodeTree);
  fail(`empty TensorTree: ${JSON.stringify(tree)}`);
}

// ---- graphs -------------------------------------------------------------------------------------
// Net: out = MatMul(x * z, y) with the parameter z = [1.0].
function netGraph(matmulOp = 'MatMul') {
  return {
    inputs: [
      { name: 'x', dtype: 'DATA_TYPE_FLOAT32', shape: [2, 3] },
      { name: 'y', dtype: 'DATA_TYPE_FLOAT32', shape: [3, 3] },
    ],
    parameters: [{ name: 'z', value: tensor([1.0]) }],
    nodes: [
      { op: 'Mul', inputs: ['x', 'z'], outputs: ['xz'] },
      { op: matmulOp, inputs: ['xz', 'y'], outputs: ['out'], name: 'matmul' },
    ],
    outputs: { value: 'out' },
  };
}

// A float64 [1] function x -> Sin(x), and one that applies GradOperation[fn] to a library function.
const sinFn = {
  inputs: [{ name: 'x', dtype: 'DATA_TYPE_FLOAT64', shape: [1] }],
  nodes: [{ op: 'Sin', inputs: ['x'], outputs: ['y'] }],
  outputs: { value: 'y' },
};
function gradOf(fn) {
  return {
    inputs: [{ name: 'x', dtype: 'DATA_TYPE_FLOAT64', shape: [1] }],
    nodes: [{ op: 'GradOperation', inputs: ['x'], outputs: ['dx'], attrs: { fn: { string_value: fn } } }],
    outputs: { value: 'dx' },
  };
}

// A CNN on x (2, 3, 6, 6) in float64: the values come from a fixed formula, and are printed for the test to check.
function filled(shape, scale, phase) {
  let k = 0;
  const build = (dims) => (dims.length === 0
    ? scale * Math.sin(0.7 * k++ + phase)
    : Array.from({ length: dims[0] }, () => build(dims.slice(1))));
  return build(shape);
}
const CONV_X = filled([2, 3, 6, 6], 1.0, 0.1);
const CONV_W1 = filled([4, 3, 3, 3], 0.3, 0.5);
const CONV_W2 = filled([2, 2, 2, 2], 0.5, 0.9);
const ints = (...values) => ({ ints: { values } });
function convGraph() {
  return {
    inputs: [{ name: 'x', dtype: 'DATA_TYPE_FLOAT64', shape: [2, 3, 6, 6] }],
    parameters: [
      { name: 'w1', value: tensor(CONV_W1, 'DATA_TYPE_FLOAT64') },
      { name: 'w2', value: tensor(CONV_W2, 'DATA_TYPE_FLOAT64') },
    ],
    nodes: [
      {
        op: 'Conv2D', inputs: ['x', 'w1'], outputs: ['c1'],
        attrs: {
          out_channel: { int_value: 4 }, kernel_size: ints(3, 3), pad_mode: { string_value: 'pad' },
          pad: ints(1, 1, 1, 1), stride: ints(2, 2),
        },
      },
      { op: 'Tanh', inputs: ['c1'], outputs: ['h'] },
      {
        op: 'Conv2D', inputs: ['h', 'w2'], outputs: ['c2'],
        attrs: { out_channel: { int_value: 2 }, kernel_size: ints(2, 2), group: { int_value: 2 } },
      },
      { op: 'Mul', inputs: ['c2', 'c2'], outputs: ['sq'] },
      { op: 'ReduceSum', inputs: ['sq'], outputs: ['loss'] },
    ],
    outputs: { value: 'loss' },
  };
}

async function main() {
  // (a) the ops we use exist
  const { ops } = await call('ListOps', {});
  const names = new Set(ops.map((op) => op.name));
  const wanted = ['MatMul', 'Mul', 'Sin', 'GradOperation', 'Jvp', 'Conv2D', 'Tanh', 'ReduceSum'];
  const missing = wanted.filter((n) => !names.has(n));
  if (missing.length) fail(`server lacks ops ${missing.join(', ')}`);

  // (b, c) register Net once, then send only inputs
  const reg = await call('RegisterNetwork', { graph: netGraph() });
  const x = tensor([[0.8, 0.6, 0.2], [1.8, 1.3, 1.1]]);
  const y = tensor([[0.11, 3.3, 1.1], [1.1, 0.2, 1.4], [1.1, 2.2, 0.3]]);
  const grad = (g, extra = {}) =>
    call('Grad', { network_id: reg.network_id, grad: g, inputs: [x, y], ...extra }).then((r) => decodeTree(r.gradients));

  // (d) first-order gradients
  const dx = await grad({});
  const [dz] = await grad({ get_by_list: true, weights: ['z'] });
  const sens = await grad({ sens_param: true }, { sens: [tensor([[0.1, 0.6, 0.2], [0.8, 1.3, 1.1]])] });

  // second derivative of Sin: register first(x) = GradOperation[fn="net"](x), differentiate it again
  const x0 = tensor([3.1415926], 'DATA_TYPE_FLOAT64');
  const first = await call('RegisterNetwork', { graph: { ...gradOf('net'), library: { net: sinFn } } });
  const d2 = await call('Grad', { network_id: first.network_id, grad: {}, inputs: [x0] });
  // ... and the same value from Run with two levels of GradOperation in the library
  const run = await call('Run', {
    graph: { ...gradOf('first'), library: { net: sinFn, first: gradOf('net') } },
    inputs: [x0],
  });

  // forward mode: one Jvp node over the library's Sin, run on x = 0.5 with tangent v = 2 (outputs: y, then dy)
  const jvp = await call('Run', {
    graph: {
      library: { net: sinFn },
      inputs: [{ name: 'x', dtype: 'DATA_TYPE_FLOAT64', shape: [1] }, { name: 'v', dtype: 'DATA_TYPE_FLOAT64', shape: [1] }],
      nodes: [{
        op: 'Jvp', inputs: ['x', 'v'], outputs: ['y', 'dy'],
        attrs: { fn: { string_value: 'net' }, positions: { ints: { values: [0] } } },
      }],
      outputs: { tuple: { items: [{ value: 'y' }, { value: 'dy' }] } },
    },
    inputs: [tensor([0.5], 'DATA_TYPE_FLOAT64'), tensor([2.0], 'DATA_TYPE_FLOAT64')],
  });

  // a small CNN built by hand: Tanh(Conv2D(x, w1; 3x3, stride 2, pad 1)), then a grouped 2x2 Conv2D, summed squares
  const conv = await call('RegisterNetwork', { graph: convGraph() });
  const convX = tensor(CONV_X, 'DATA_TYPE_FLOAT64');
  const convDx = await call('Grad', { network_id: conv.network_id, grad: {}, inputs: [convX] });
  const convDw = await call('Grad', {
    network_id: conv.network_id, grad: { get_by_list: true, weights: ['w1', 'w2'] }, inputs: [convX], return_forward: true,
  });

  // an ONNX model sent as its bytes (fixtures/mlp.onnx, written by fixtures/make_mlp_onnx.py): the server converts
  // it; its initializers are parameters under their ONNX names
  const mlp = await call('RegisterNetwork', { onnx_model: readFileSync(path.join(here, 'fixtures', 'mlp.onnx')) });
  const onnxX = filled([2, 3], 1.0, 0.3);
  const onnxGrad = await call('Grad', {
    network_id: mlp.network_id,
    grad: { get_all: true, get_by_list: true, weights: ['0.weight', '0.bias', '2.weight', '2.bias'] },
    inputs: [tensor(onnxX, 'DATA_TYPE_FLOAT64')],
    return_forward: true,
  });

  // (f) a bad graph: the op name is case-sensitive
  let badGraph = null;
  try {
    await call('RegisterNetwork', { graph: netGraph('Matmul') });
  } catch (err) {
    badGraph = { code: err.code, code_name: statusName[err.code], message: err.details, field_violations: [] };
    for (const raw of err.metadata?.get('grpc-status-details-bin') ?? []) {
      const status = RpcStatus.decode(raw);
      for (const any of status.details) {
        const typeName = any.type_url.slice(any.type_url.lastIndexOf('/') + 1);
        if (typeName !== 'google.rpc.BadRequest') continue;
        const badRequest = rpcRoot.lookupType(typeName).decode(any.value);
        for (const v of badRequest.field_violations) {
          badGraph.field_violations.push({ field: v.field, description: v.description });
        }
      }
    }
  }

  console.log(JSON.stringify({
    target,
    ops_checked: wanted,
    op_count: ops.length,
    network_id: reg.network_id,
    created: reg.created,
    dx,
    dz,
    sens,
    d2sin: decodeTree(d2.gradients),
    d2sin_run: decodeTree(run.outputs),
    jvp_sin: decodeTree(jvp.outputs),
    conv: {
      x: CONV_X, w1: CONV_W1, w2: CONV_W2,
      loss: decodeTree(convDw.forward), dx: decodeTree(convDx.gradients), dw: decodeTree(convDw.gradients),
    },
    onnx: { x: onnxX, y: decodeTree(onnxGrad.forward), gradients: decodeTree(onnxGrad.gradients) },
    bad_graph: badGraph,
  }, null, 2));
}

try {
  await main();
} catch (err) {
  fail(`${statusName[err.code] ?? ''} ${err.details ?? err.stack ?? err}`);
} finally {
  client.close();
}
