//! Keras model configs: the v3 `.keras` zip (`config.json`, `metadata.json`,
//! `model.weights.h5`) and the `model_config` JSON attribute of legacy HDF5 files.
//!
//! Loading a Keras model deserializes its config: every object names a `module` and a
//! `class_name` that Keras imports, plus a `registered_name` it looks up among registered
//! custom objects. Denylisting `Lambda` alone has been bypassed repeatedly (CVE-2025-1550:
//! arbitrary modules in `config.json`; CVE-2025-8747: a `keras.utils.get_file` gadget;
//! CVE-2025-9906: a config that calls `enable_unsafe_deserialization`; CVE-2025-49655:
//! `TorchModuleWrapper` runs `torch.load`), so this module allowlists: objects from Keras's
//! own modules (`keras`, `keras.*`, `keras_hub.*`, `keras_nlp.*`) and, in configs without
//! modules, Keras's built-in class names. `Lambda` layers and serialized lambdas carry Python
//! code and are malicious; anything else outside the allowlist needs user code to load and is
//! suspicious.

use tg_archive::{ReadAt, ZipArchive};
use tg_report::{Finding, Location, Verdict};

use crate::formats::Outcome;
use crate::json::{Json, obj_get};
use crate::strset::StrSet;

/// HDF5's signature (a Keras `.h5` model holds its config in an HDF5 attribute).
pub(crate) fn is_hdf5(head: &[u8]) -> bool {
    head.starts_with(b"\x89HDF\r\n\x1a\n")
}

/// Rule ids.
pub mod rules {
    /// A Keras `Lambda` layer or serialized lambda: Python code run when the model loads.
    pub const LAMBDA: &str = "TG-KERAS-001";
    /// An object from outside Keras's own modules and classes (custom code needed to load).
    pub const CUSTOM_OBJECT: &str = "TG-KERAS-002";
    /// A known safe-mode bypass gadget: `TorchModuleWrapper`, `enable_unsafe_deserialization`,
    /// `get_file`, or a module that runs code (`os`, `builtins`, `subprocess`, ...).
    pub const GADGET: &str = "TG-KERAS-003";
    /// A `.keras` archive whose config cannot be read.
    pub const MALFORMED: &str = "TG-KERAS-004";
}

/// Largest `config.json` read.
const MAX_CONFIG: u64 = 64 << 20;
/// Bytes that failed JSON parses in one HDF5 file may read in all.
const MAX_H5_FAILED_BYTES: usize = 512 << 20;

/// Modules whose objects run code or reach the system when Keras resolves them.
const CODE_MODULES: &[&str] = &[
    "os",
    "posix",
    "nt",
    "subprocess",
    "builtins",
    "__builtin__",
    "sys",
    "shutil",
    "socket",
    "importlib",
    "runpy",
    "pickle",
    "marshal",
    "ctypes",
    "pty",
    "code",
    "codeop",
    "webbrowser",
    "torch",
    "numpy",
    "pathlib",
    "io",
    "functools",
    "operator",
];

/// Strings whose mere presence in a config is a known bypass (CVE-2025-9906, CVE-2025-8747,
/// CVE-2025-49655).
const GADGET_STRINGS: &[&str] = &[
    "enable_unsafe_deserialization",
    "get_file",
    "TorchModuleWrapper",
];

/// Class names Keras itself provides (layers, initializers, regularizers, constraints,
/// optimizers and schedules, losses, metrics, dtype policies), taken from Keras 3.15 plus the
/// Keras 2 names its H5 configs still carry. `Lambda` and `TorchModuleWrapper` are not here.
const BUILTIN_CLASSES: &[&str] = &[
    "AUC",
    "AWQConfig",
    "AWQDTypePolicy",
    "AbsMaxQuantizer",
    "Accuracy",
    "Activation",
    "ActivityRegularization",
    "Adadelta",
    "Adafactor",
    "Adagrad",
    "Adam",
    "AdamW",
    "Adamax",
    "AdaptiveAveragePooling1D",
    "AdaptiveAveragePooling2D",
    "AdaptiveAveragePooling3D",
    "AdaptiveMaxPooling1D",
    "AdaptiveMaxPooling2D",
    "AdaptiveMaxPooling3D",
    "Add",
    "AdditiveAttention",
    "AlphaDropout",
    "Attention",
    "AugMix",
    "AutoContrast",
    "Average",
    "AveragePooling1D",
    "AveragePooling2D",
    "AveragePooling3D",
    "AvgPool1D",
    "AvgPool2D",
    "AvgPool3D",
    "BatchNormalization",
    "Bidirectional",
    "BinaryAccuracy",
    "BinaryCrossentropy",
    "BinaryFocalCrossentropy",
    "BinaryIoU",
    "CTC",
    "CategoricalAccuracy",
    "CategoricalCrossentropy",
    "CategoricalFocalCrossentropy",
    "CategoricalGeneralizedCrossEntropy",
    "CategoricalHinge",
    "CategoryEncoding",
    "CenterCrop",
    "Circle",
    "Concatenate",
    "ConcordanceCorrelation",
    "Constant",
    "ContrastLimitedAdaptiveHistogramEqualization",
    "Conv1D",
    "Conv1DTranspose",
    "Conv2D",
    "Conv2DTranspose",
    "Conv3D",
    "Conv3DTranspose",
    "ConvLSTM1D",
    "ConvLSTM2D",
    "ConvLSTM3D",
    "Convolution1D",
    "Convolution1DTranspose",
    "Convolution2D",
    "Convolution2DTranspose",
    "Convolution3D",
    "Convolution3DTranspose",
    "CosineDecay",
    "CosineDecayRestarts",
    "CosineSimilarity",
    "Cropping1D",
    "Cropping2D",
    "Cropping3D",
    "CuDNNGRU",
    "CuDNNLSTM",
    "CutMix",
    "DTypePolicy",
    "Dense",
    "DepthwiseConv1D",
    "DepthwiseConv2D",
    "Dice",
    "Discretization",
    "Dot",
    "Dropout",
    "ELU",
    "EinsumDense",
    "Embedding",
    "Equalization",
    "ExponentialDecay",
    "F1Score",
    "FBetaScore",
    "FalseNegatives",
    "FalsePositives",
    "Flatten",
    "Float8QuantizationConfig",
    "FloatDTypePolicy",
    "Ftrl",
    "Functional",
    "GPTQConfig",
    "GPTQDTypePolicy",
    "GRU",
    "GRUCell",
    "GaussianDropout",
    "GaussianNoise",
    "GlobalAveragePooling1D",
    "GlobalAveragePooling2D",
    "GlobalAveragePooling3D",
    "GlobalAvgPool1D",
    "GlobalAvgPool2D",
    "GlobalAvgPool3D",
    "GlobalMaxPool1D",
    "GlobalMaxPool2D",
    "GlobalMaxPool3D",
    "GlobalMaxPooling1D",
    "GlobalMaxPooling2D",
    "GlobalMaxPooling3D",
    "GlorotNormal",
    "GlorotUniform",
    "GroupNormalization",
    "GroupQueryAttention",
    "HashedCrossing",
    "Hashing",
    "HeNormal",
    "HeUniform",
    "Hinge",
    "Huber",
    "Identity",
    "IdentityInitializer",
    "InputLayer",
    "InputSpec",
    "Int4DTypePolicy",
    "Int4QuantizationConfig",
    "Int8QuantizationConfig",
    "IntegerLookup",
    "InverseTimeDecay",
    "IoU",
    "KLDivergence",
    "KerasTensor",
    "L1",
    "L1L2",
    "L2",
    "LSTM",
    "LSTMCell",
    "Lamb",
    "LayerNormalization",
    "LeakyReLU",
    "LecunNormal",
    "LecunUniform",
    "Lion",
    "LogCosh",
    "LogCoshError",
    "LossScaleOptimizer",
    "Masking",
    "MaxNorm",
    "MaxNumBoundingBoxes",
    "MaxPool1D",
    "MaxPool2D",
    "MaxPool3D",
    "MaxPooling1D",
    "MaxPooling2D",
    "MaxPooling3D",
    "Maximum",
    "Mean",
    "MeanAbsoluteError",
    "MeanAbsolutePercentageError",
    "MeanIoU",
    "MeanMetricWrapper",
    "MeanSquaredError",
    "MeanSquaredLogarithmicError",
    "MelSpectrogram",
    "MinMaxNorm",
    "Minimum",
    "MixUp",
    "Model",
    "MultiHeadAttention",
    "MultiOptimizer",
    "Multiply",
    "Muon",
    "Nadam",
    "NonNeg",
    "Normalization",
    "OneHotIoU",
    "OneHotMeanIoU",
    "Ones",
    "OptimizerMap",
    "Orthogonal",
    "OrthogonalInitializer",
    "OrthogonalRegularizer",
    "PReLU",
    "PearsonCorrelation",
    "Permute",
    "PiecewiseConstantDecay",
    "Pipeline",
    "Poisson",
    "Policy",
    "PolynomialDecay",
    "Precision",
    "PrecisionAtRecall",
    "QuantizedDTypePolicy",
    "QuantizedFloat8DTypePolicy",
    "R2Score",
    "RMSNormalization",
    "RMSprop",
    "RNN",
    "RandAugment",
    "RandomBrightness",
    "RandomColorDegeneration",
    "RandomColorJitter",
    "RandomContrast",
    "RandomCrop",
    "RandomElasticTransform",
    "RandomErasing",
    "RandomFlip",
    "RandomGaussianBlur",
    "RandomGrayscale",
    "RandomHue",
    "RandomInvert",
    "RandomNormal",
    "RandomPerspective",
    "RandomPosterization",
    "RandomRotation",
    "RandomSaturation",
    "RandomSharpness",
    "RandomShear",
    "RandomTranslation",
    "RandomUniform",
    "RandomZoom",
    "ReLU",
    "Recall",
    "RecallAtPrecision",
    "RepeatVector",
    "Rescaling",
    "Reshape",
    "Resizing",
    "ReversibleEmbedding",
    "RootMeanSquaredError",
    "SGD",
    "STFT",
    "STFTInitializer",
    "STFTSpectrogram",
    "ScheduleFreeAdamW",
    "SensitivityAtSpecificity",
    "SeparableConv1D",
    "SeparableConv2D",
    "SeparableConvolution1D",
    "SeparableConvolution2D",
    "Sequential",
    "SimpleRNN",
    "SimpleRNNCell",
    "Softmax",
    "Solarization",
    "SparseCategoricalAccuracy",
    "SparseCategoricalCrossentropy",
    "SparseTopKCategoricalAccuracy",
    "SpatialDropout1D",
    "SpatialDropout2D",
    "SpatialDropout3D",
    "SpecificityAtSensitivity",
    "SpectralNormalization",
    "SquaredHinge",
    "StackedRNNCells",
    "StringLookup",
    "Subtract",
    "Sum",
    "TFSMLayer",
    "TensorShape",
    "TextVectorization",
    "TimeDistributed",
    "TopKCategoricalAccuracy",
    "TrueNegatives",
    "TruePositives",
    "TruncatedNormal",
    "Tversky",
    "UnitNorm",
    "UnitNormalization",
    "UpSampling1D",
    "UpSampling2D",
    "UpSampling3D",
    "VarianceScaling",
    "ZeroPadding1D",
    "ZeroPadding2D",
    "ZeroPadding3D",
    "Zeros",
    "__bytes__",
    "__ellipsis__",
    "__keras_tensor__",
    "__numpy__",
    "__slice__",
    "__tensor__",
    "__tuple__",
    "__typespec__",
    "function",
    // Keras 2 (tf.keras) serialization helpers
    "InputSpec",
    "TensorSpec",
    "TypeSpec",
];

/// [`BUILTIN_CLASSES`], hashed.
static BUILTIN_SET: StrSet<1024> = StrSet::new(BUILTIN_CLASSES);

/// Whether a module-less `class_name` is a Keras built-in: a plain name from the list, or one
/// registered under Keras 2's default package (`Custom>Adam`, how TF 2.11+ saved optimizers).
fn builtin_class(class: &str) -> bool {
    match class.split_once('>') {
        Some(("Custom" | "keras", name)) => BUILTIN_SET.contains(name),
        Some(_) => false,
        None => BUILTIN_SET.contains(class),
    }
}

/// Whether a `TFOpLambda` function name is tensor math: the operator, math, nn, linalg,
/// image and signal namespaces, or a top-level op other than the ones that run Python or load
/// native code. File I/O (`io.*`), `raw_ops.*` and everything else are not.
fn tf_op_is_plain_math(function: &str) -> bool {
    const NAMESPACES: &[&str] = &[
        "__operators__.",
        "math.",
        "nn.",
        "linalg.",
        "image.",
        "signal.",
    ];
    const RUNS_CODE: &[&str] = &[
        "py_function",
        "numpy_function",
        "py_func",
        "load_op_library",
        "load_library",
        "function",
        "autograph",
    ];
    if NAMESPACES.iter().any(|n| function.starts_with(n)) {
        return !function.contains("__") || function.starts_with("__operators__.");
    }
    !function.is_empty()
        && !function.contains('.')
        && function
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !RUNS_CODE.contains(&function)
}

/// Whether `module` is one of Keras's own.
fn keras_module(module: &str) -> bool {
    ["keras", "keras_hub", "keras_nlp", "tf_keras"]
        .iter()
        .any(|k| module == *k || module.strip_prefix(k).is_some_and(|r| r.starts_with('.')))
}

/// Whether a `registered_name` is one Keras itself registers: none, the class's own name, or a
/// `package>Name` from a Keras package.
fn keras_registered(name: &str, class_name: Option<&str>) -> bool {
    match name.split_once('>') {
        Some((package, _)) => keras_module(package),
        None => Some(name) == class_name || BUILTIN_SET.contains(name),
    }
}

/// Judge one config tree. `location` is where the config lives (a member or an offset).
pub(crate) fn judge_config(v: &Json<'_>, location: &Location, out: &mut Vec<Finding>) {
    let mut seen = std::collections::HashSet::new();
    walk(v, location, out, &mut seen, 0);
}

fn push(
    out: &mut Vec<Finding>,
    seen: &mut std::collections::HashSet<String>,
    rule: &'static str,
    verdict: Verdict,
    message: String,
    location: &Location,
    evidence: String,
) {
    if seen.insert(format!("{rule}{message}")) {
        out.push(Finding::new(rule, verdict, message, location.clone()).with_evidence(evidence));
    }
}

/// The first 200 characters of `v` as compact JSON (what `Value::to_string` writes).
fn snippet(v: &Json<'_>) -> String {
    serde_json::to_string(v)
        .unwrap_or_default()
        .chars()
        .take(200)
        .collect()
}

/// Which of [`GADGET_STRINGS`] occur in `s` as a whole name (`keras.utils.get_file`), not
/// inside another name: a bit per gadget.
fn gadget_names(s: &str) -> u8 {
    let mut found = 0u8;
    // Names are runs of ASCII letters, digits and `_`; every other byte (a non-ASCII
    // character's included) separates them.
    for token in s
        .as_bytes()
        .split(|c| !(c.is_ascii_alphanumeric() || *c == b'_'))
    {
        if token.len() < 8 {
            continue;
        }
        for (i, g) in GADGET_STRINGS.iter().enumerate() {
            if token == g.as_bytes() {
                found |= 1 << i;
            }
        }
    }
    found
}

fn walk(
    v: &Json<'_>,
    loc: &Location,
    out: &mut Vec<Finding>,
    seen: &mut std::collections::HashSet<String>,
    depth: u32,
) {
    if depth > 256 {
        return; // serde_json refuses deeper nesting than 128 anyway
    }
    match v {
        Json::Obj(map) => {
            let get = |k: &str| obj_get(map, k).and_then(Json::as_str);
            let class = get("class_name");
            let module = get("module");
            let registered = get("registered_name");
            if matches!(class, Some("Lambda" | "__lambda__")) {
                // one finding for the layer; its serialized function is the evidence
                object(
                    v,
                    class.unwrap_or_default(),
                    module,
                    registered,
                    loc,
                    out,
                    seen,
                );
                return;
            }
            if let Some(class) = class {
                object(v, class, module, registered, loc, out, seen);
            }
            for (_, child) in map {
                walk(child, loc, out, seen, depth + 1);
            }
        }
        Json::Arr(items) => {
            for c in items {
                walk(c, loc, out, seen, depth + 1);
            }
        }
        Json::Str(s) => {
            let found = gadget_names(s);
            if found != 0 {
                for (i, g) in GADGET_STRINGS.iter().enumerate() {
                    if found & (1 << i) != 0 {
                        push(
                            out,
                            seen,
                            rules::GADGET,
                            Verdict::Malicious,
                            format!("config names '{g}', a known Keras safe-mode bypass"),
                            loc,
                            s.chars().take(200).collect(),
                        );
                    }
                }
            }
        }
        _ => {}
    }
}

/// Judge one object (`v`, a [`Json::Obj`]) that names a class.
fn object(
    v: &Json<'_>,
    class: &str,
    module: Option<&str>,
    registered: Option<&str>,
    loc: &Location,
    out: &mut Vec<Finding>,
    seen: &mut std::collections::HashSet<String>,
) {
    if class == "Lambda" || class == "__lambda__" {
        let code = v
            .get("config")
            .and_then(|c| c.get("function").or_else(|| c.get("code")))
            .map_or_else(|| snippet(v), snippet);
        push(
            out,
            seen,
            rules::LAMBDA,
            Verdict::Malicious,
            format!("Keras {class} object: Python code runs when the model loads"),
            loc,
            code,
        );
        return;
    }
    if let Some(m) = module {
        let root = m.split('.').next().unwrap_or(m);
        if CODE_MODULES.contains(&root) {
            push(
                out,
                seen,
                rules::GADGET,
                Verdict::Malicious,
                format!(
                    "config resolves '{m}.{class}': Keras would import and call code from '{m}'"
                ),
                loc,
                snippet(v),
            );
            return;
        }
        if !keras_module(m) {
            push(
                out,
                seen,
                rules::CUSTOM_OBJECT,
                Verdict::Suspicious,
                format!(
                    "config object '{m}.{class}' comes from outside Keras: loading it imports that module"
                ),
                loc,
                snippet(v),
            );
            return;
        }
    } else if matches!(class, "TFOpLambda" | "SlicingOpLambda") {
        // Keras 2 functional models record raw TensorFlow calls by API name.
        let function = v
            .get("config")
            .and_then(|c| c.get("function"))
            .and_then(Json::as_str)
            .unwrap_or("");
        if !tf_op_is_plain_math(function) {
            push(
                out,
                seen,
                rules::CUSTOM_OBJECT,
                Verdict::Suspicious,
                format!(
                    "Keras {class} layer calls TensorFlow API '{function}', which is not plain tensor math"
                ),
                loc,
                snippet(v),
            );
        }
        return;
    } else if !builtin_class(class) {
        push(
            out,
            seen,
            rules::CUSTOM_OBJECT,
            Verdict::Suspicious,
            format!("config class '{class}' is not a Keras built-in: it needs custom code to load"),
            loc,
            snippet(v),
        );
        return;
    }
    if let Some(r) = registered
        && !keras_registered(r, Some(class))
    {
        push(
            out,
            seen,
            rules::CUSTOM_OBJECT,
            Verdict::Suspicious,
            format!(
                "config object '{class}' is registered as '{r}', a custom object outside Keras"
            ),
            loc,
            snippet(v),
        );
    }
}

/// Every Keras config JSON (`{"class_name": …}` or `{"module": …}`, the `model_config` and
/// `training_config` attributes) in an HDF5 file's bytes, judged.
pub(crate) fn scan_h5(bytes: &[u8]) -> (Vec<Finding>, Vec<String>) {
    let mut scan = H5Scan::default();
    scan.window(bytes, 0, bytes.len());
    scan.finish()
}

/// How many bytes past its own part a window of an HDF5 file must hold: a config that starts
/// in the window can be parsed whole, and a gadget name that starts there is seen whole.
pub(crate) const H5_OVERLAP: u64 = MAX_CONFIG;

/// The names looked for anywhere in an HDF5 file, in `H5Scan::gadgets` order.
fn h5_names() -> impl Iterator<Item = &'static &'static str> {
    GADGET_STRINGS.iter().chain(&["\"Lambda\""])
}

/// The Keras configs of an HDF5 file, read window by window so that memory stays bounded
/// whatever the file's size: each window is the file from `base`, its own part (where configs
/// and names may start) followed by [`H5_OVERLAP`] bytes of the next.
#[derive(Debug, Default)]
pub(crate) struct H5Scan {
    findings: Vec<Finding>,
    configs: usize,
    failed_bytes: usize,
    /// Where the next config may start (a parsed config is skipped whole, into later windows).
    next: u64,
    /// The first place of each gadget name, once seen.
    gadgets: [Option<u64>; GADGET_STRINGS.len() + 1],
    stopped: bool,
}

impl H5Scan {
    /// Scan `bytes`, the file from offset `base`, for configs and names that start in its first
    /// `own` bytes.
    pub(crate) fn window(&mut self, bytes: &[u8], base: u64, own: usize) {
        let own = own.min(bytes.len());
        // One pass over the `{` bytes; a parse reads at most one config-sized window, and the
        // windows of failed parses share one budget, so hostile files cannot make this quadratic.
        let mut at = usize::try_from(self.next.saturating_sub(base)).unwrap_or(usize::MAX);
        while !self.stopped
            && let Some(p) = bytes.get(at..own).and_then(|r| memchr::memchr(b'{', r))
        {
            let start = at + p;
            let rest = &bytes[start..];
            if !(rest.starts_with(b"{\"class_name\"") || rest.starts_with(b"{\"module\"")) {
                at = start + 1;
                continue;
            }
            let window = &rest[..rest.len().min(MAX_CONFIG as usize)];
            let mut it = serde_json::Deserializer::from_slice(window).into_iter::<Json<'_>>();
            let abs = base + start as u64;
            match it.next() {
                Some(Ok(v)) => {
                    self.configs += 1;
                    judge_config(&v, &Location::at(abs), &mut self.findings);
                    at = start + it.byte_offset().max(1);
                }
                _ => {
                    self.failed_bytes += window.len();
                    if self.failed_bytes > MAX_H5_FAILED_BYTES {
                        self.findings.push(Finding::new(
                            rules::MALFORMED,
                            Verdict::Inconclusive,
                            "too many unreadable config-like strings: not all were read",
                            Location::at(abs),
                        ));
                        self.stopped = true;
                    }
                    at = start + 1;
                }
            }
        }
        self.next = self.next.max(base + at as u64);
        for (seen, g) in self.gadgets.iter_mut().zip(h5_names()) {
            if seen.is_none()
                && let Some(p) = find(bytes, g.as_bytes()).filter(|&p| p < own)
            {
                *seen = Some(base + p as u64);
            }
        }
    }

    /// The findings and notes, once every window has been read.
    pub(crate) fn finish(mut self) -> (Vec<Finding>, Vec<String>) {
        let mut notes = Vec::new();
        if self.configs == 0 {
            notes.push("HDF5 file without a Keras model config".into());
        }
        // Gadget names outside any parsed config (a config split across HDF5 chunks).
        for (seen, g) in self.gadgets.iter().zip(h5_names()) {
            if let Some(p) = *seen
                && !self
                    .findings
                    .iter()
                    .any(|f| f.verdict == Verdict::Malicious)
            {
                self.findings.push(
                    Finding::new(
                        rules::GADGET,
                        Verdict::Malicious,
                        format!("HDF5 file names '{g}' outside a readable config"),
                        Location::at(p),
                    )
                    .with_evidence((*g).to_owned()),
                );
            }
        }
        (self.findings, notes)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}

/// Scan a zip as a Keras v3 `.keras` archive; `None` unless it has a top-level `config.json`
/// with a `metadata.json` beside it or a Keras object (`class_name`) at its root.
pub(crate) fn scan_zip<R: ReadAt>(zip: &ZipArchive<R>) -> Option<Outcome> {
    // Python's zipfile keeps the last entry of a repeated name.
    let member = |name: &str| zip.entries().iter().rev().find(|e| e.name == name);
    let config = member("config.json")?;
    let metadata = member("metadata.json");
    let mut out = Outcome {
        format: "keras",
        ..Outcome::default()
    };
    let read = |e: &tg_archive::Entry| -> Result<Vec<u8>, String> {
        if e.uncompressed_size > MAX_CONFIG {
            return Err(format!("{} is larger than {MAX_CONFIG} bytes", e.name));
        }
        zip.read(e).map_err(|x| x.to_string())
    };
    fn parse<'b>(
        e: &tg_archive::Entry,
        bytes: &'b Result<Vec<u8>, String>,
    ) -> Result<Json<'b>, String> {
        match bytes {
            Ok(b) => serde_json::from_slice(b).map_err(|x| format!("{} is not JSON: {x}", e.name)),
            Err(x) => Err(x.clone()),
        }
    }
    let config_bytes = read(config);
    let config = parse(config, &config_bytes);
    // Keras itself needs only config.json; without metadata.json the zip is a Keras model
    // when its config is a Keras object.
    match metadata {
        Some(m) => {
            let bytes = read(m);
            match parse(m, &bytes) {
                Ok(m) => {
                    if let Some(v) = m.get("keras_version").and_then(Json::as_str) {
                        out.notes.push(format!("saved by Keras {v}"));
                    }
                }
                Err(e) => out.notes.push(e),
            }
        }
        None => {
            if !config.as_ref().is_ok_and(|c| c.get("class_name").is_some()) {
                return None;
            }
            out.notes
                .push("no metadata.json: read as a Keras archive from its config".into());
        }
    }
    match config {
        Ok(v) => judge_config(
            &v,
            &Location::default().within("config.json"),
            &mut out.findings,
        ),
        Err(e) => out.findings.push(Finding::new(
            rules::MALFORMED,
            Verdict::Inconclusive,
            format!("cannot read the Keras config: {e}"),
            Location::default().within("config.json"),
        )),
    }
    Some(out)
}

/// Fuzzing entry point: judge `data` as HDF5 bytes holding Keras configs.
#[doc(hidden)]
pub fn fuzz_keras_h5(data: &[u8]) {
    let whole = scan_h5(data);
    // The same bytes in windows of 64 (each holding the rest of the input as its overlap)
    // must give the same findings and notes.
    assert_eq!(windowed(data, 64), whole);
}

/// `data` scanned as windows whose own parts are `own` bytes long.
fn windowed(data: &[u8], own: usize) -> (Vec<Finding>, Vec<String>) {
    let mut scan = H5Scan::default();
    for base in (0..data.len()).step_by(own.max(1)) {
        scan.window(&data[base..], base as u64, own);
    }
    scan.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(config: &str) -> Verdict {
        let v: Json<'_> = serde_json::from_str(config).unwrap();
        let mut out = Vec::new();
        judge_config(&v, &Location::default(), &mut out);
        out.iter()
            .map(|f| f.verdict)
            .max()
            .unwrap_or(Verdict::Clean)
    }

    #[test]
    fn unterminated_configs_are_bounded() {
        let mut bytes = b"\x89HDF\r\n\x1a\n".to_vec();
        for _ in 0..4000 {
            bytes.extend(b"{\"module\": \"");
            bytes.extend([b'a'; 2000]);
        }
        let start = std::time::Instant::now();
        let (findings, _) = scan_h5(&bytes);
        assert!(start.elapsed().as_secs() < 20, "{:?}", start.elapsed());
        assert!(
            findings
                .iter()
                .any(|f| f.rule == rules::MALFORMED && f.verdict == Verdict::Inconclusive)
        );
    }

    #[test]
    fn windows_find_what_one_pass_finds() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/format_fixtures");
        let mut seen = 0;
        for entry in fs_err::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "h5") {
                let bytes = fs_err::read(&path).unwrap();
                let whole = scan_h5(&bytes);
                for own in [1, 100, 4096] {
                    assert_eq!(
                        windowed(&bytes, own),
                        whole,
                        "{} in windows of {own}",
                        path.display()
                    );
                }
                seen += 1;
            }
        }
        assert!(seen >= 2, "no .h5 fixtures in {dir}");
    }

    #[test]
    fn keras2_h5_configs() {
        // a tf.keras 2 functional model with a TF op layer and a Custom>Adam optimizer
        let clean = r#"{"class_name": "Functional", "config": {"name": "m", "layers": [
            {"class_name": "InputLayer", "config": {"batch_input_shape": {"class_name": "__tuple__", "items": [null, 4]}}},
            {"class_name": "TFOpLambda", "config": {"function": "__operators__.add"}},
            {"class_name": "TFOpLambda", "config": {"function": "math.reduce_mean"}},
            {"class_name": "SlicingOpLambda", "config": {"function": "__operators__.getitem"}},
            {"class_name": "TFOpLambda", "config": {"function": "reshape"}},
            {"class_name": "Dense", "config": {"kernel_initializer": {"class_name": "GlorotUniform", "config": {"seed": null}}}}]},
            "optimizer_config": {"class_name": "Custom>Adam", "config": {}}}"#;
        assert_eq!(verdict(clean), Verdict::Clean);
        for (config, want) in [
            (
                r#"{"class_name": "TFOpLambda", "config": {"function": "io.write_file"}}"#,
                Verdict::Suspicious,
            ),
            (
                r#"{"class_name": "TFOpLambda", "config": {"function": "py_function"}}"#,
                Verdict::Suspicious,
            ),
            (
                r#"{"class_name": "Custom>MyLayer", "config": {}}"#,
                Verdict::Suspicious,
            ),
            (
                r#"{"class_name": "Acme>Adam", "config": {}}"#,
                Verdict::Suspicious,
            ),
            (
                r#"{"class_name": "Lambda", "config": {"function": ["4wEAAA==", null, null]}}"#,
                Verdict::Malicious,
            ),
            (
                r#"{"module": "builtins", "class_name": "function", "config": "exec"}"#,
                Verdict::Malicious,
            ),
            (
                r#"{"module": "keras.layers", "class_name": "Dense", "config": {"name": "get_file"}}"#,
                Verdict::Malicious,
            ),
            (
                r#"{"module": "keras.layers", "class_name": "Dense", "config": {"name": "get_file_embedding"}}"#,
                Verdict::Clean,
            ),
            (
                r#"{"module": "keras_hub.models", "class_name": "GemmaBackbone", "config": {}, "registered_name": "keras_hub>GemmaBackbone"}"#,
                Verdict::Clean,
            ),
            (
                r#"{"module": "keras.layers", "class_name": "Dense", "config": {}, "registered_name": "Acme>Dense"}"#,
                Verdict::Suspicious,
            ),
        ] {
            assert_eq!(verdict(config), want, "{config}");
        }
    }
}
