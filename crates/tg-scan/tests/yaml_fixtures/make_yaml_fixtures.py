"""Regenerate the YAML config fixtures in this folder (`expected.csv` included).

Configs are written by the real writers: PyYAML (`yaml.dump` writes Python tags for objects,
`yaml.safe_dump` plain data) and OmegaConf (`OmegaConf.save`, what NeMo writes into a `.nemo`
archive). The `.nemo` files are tars built with `tarfile` as NeMo's `save_to` lays them out
(`model_config.yaml` beside `model_weights.ckpt`, here the benign zip checkpoint fixture). Two
tricks no writer produces (a `%TAG` handle, an escaped key) are written as text. Nothing here
ever loads a fixture. Run from this folder:

    python -m venv /tmp/yvenv && /tmp/yvenv/bin/pip install pyyaml omegaconf
    /tmp/yvenv/bin/python make_yaml_fixtures.py
"""

import argparse
import io
import os
import tarfile

import yaml
from omegaconf import OmegaConf

HERE = os.path.dirname(os.path.abspath(__file__))
ROWS = []


def out(name, data, verdict, fmt, note):
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(HERE, name), "wb") as f:
        f.write(data)
    assert len(data) < 100_000, (name, len(data))
    ROWS.append((name, verdict, fmt, note))


def omegaconf_text(cfg):
    buf = io.StringIO()
    OmegaConf.save(OmegaConf.create(cfg), buf)
    return buf.getvalue()


NEMO_MODEL = {
    "sample_rate": 16000,
    "encoder": {
        "_target_": "nemo.collections.asr.modules.ConformerEncoder",
        "feat_in": 80,
        "n_layers": 2,
        "d_model": 64,
    },
    "decoder": {
        "_target_": "nemo.collections.asr.modules.ConvASRDecoder",
        "feat_in": 64,
        "num_classes": 28,
    },
    "optim": {
        "name": "adamw",
        "lr": 0.001,
        "sched": {"name": "CosineAnnealing", "warmup_steps": 100},
    },
    "target": "nemo.collections.asr.models.ctc_models.EncDecCTCModel",
}


def nemo(name, config_text, verdict, note):
    with open(os.path.join(HERE, "..", "fixtures", "torch_zip_benign.pt"), "rb") as f:
        weights = f.read()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for member, data in [("./model_config.yaml", config_text.encode()),
                             ("./model_weights.ckpt", weights)]:
            info = tarfile.TarInfo(member)
            info.size = len(data)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    out(name, buf.getvalue(), verdict, "tar", note)


class Evil:
    """Pickled or dumped, it calls os.system("id") when an unsafe loader rebuilds it."""

    def __reduce__(self):
        return (os.system, ("id",))


def main():
    out("yaml_hparams_safe_dump.yaml",
        yaml.safe_dump({"lr": 0.0003, "batch_size": 32, "layers": [64, 64], "name": "run!"}),
        "clean", "not-a-model", "yaml.safe_dump of hyperparameters: plain data that no loader turns into code")
    out("yaml_nemo_config.yaml", omegaconf_text({"model": NEMO_MODEL}),
        "clean", "yaml", "OmegaConf.save of a NeMo ASR config: _target_ classes from nemo")
    out("yaml_tuple.yaml", yaml.dump({"betas": (0.9, 0.999), "eps": 1e-8}),
        "clean", "yaml", "yaml.dump of a tuple: !!python/tuple builds plain data")
    out("yaml_hydra_exec.yaml",
        omegaconf_text({"model": {"_target_": "builtins.exec", "_args_": ["import os; os.system('id')"]}}),
        "malicious", "yaml", "CVE-2025-23304: Hydra instantiate calls builtins.exec")
    out("yaml_hydra_unknown.yaml",
        omegaconf_text({"model": {"_target_": "mylab.models.Net", "depth": 4}}),
        "suspicious", "yaml", "a _target_ outside the known ML packages: code this scan cannot judge")
    out("yaml_hydra_resolver.yaml",
        omegaconf_text({"fn": {"_target_": "hydra.utils.get_method", "path": "os.system"}}),
        "malicious", "yaml", "hydra.utils.get_method as a _target_ resolves any name")
    out("yaml_unsafe_apply.yaml", yaml.dump({"callback": Evil()}),
        "malicious", "yaml", "yaml.dump of an object whose __reduce__ is os.system: !!python/object/apply:posix.system")
    out("yaml_namespace.yaml", yaml.dump({"hparams": argparse.Namespace(lr=0.1, depth=4)}),
        "suspicious", "yaml", "yaml.dump of an argparse.Namespace (Lightning hparams style): needs yaml.unsafe_load")
    out("yaml_tag_directive.yaml",
        "%TAG !p! tag:yaml.org,2002:python/\n---\ncallback: !p!object/apply:subprocess.check_output [[id]]\n",
        "malicious", "yaml", "a %TAG handle spells the python tag")
    out("yaml_escaped_key.yaml", 'model: {"\\x5ftarget_": os.system, command: id}\n',
        "malicious", "yaml", "an escaped key that parses as _target_")
    nemo("nemo_benign.nemo", omegaconf_text(NEMO_MODEL), "clean",
         "a .nemo tar: NeMo config and a benign zip checkpoint")
    nemo("nemo_hydra_exec.nemo",
         omegaconf_text(dict(NEMO_MODEL, encoder={"_target_": "builtins.exec", "_args_": ["import os"]})),
         "malicious", "CVE-2025-23304 in a .nemo: the encoder's _target_ is builtins.exec")
    with open(os.path.join(HERE, "expected.csv"), "w") as f:
        f.write("file,expected_verdict,expected_format,note\n")
        for name, verdict, fmt, note in ROWS:
            f.write(f"{name},{verdict},{fmt},{note.replace(',', ';')}\n")


if __name__ == "__main__":
    main()
