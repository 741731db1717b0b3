"""Backbones by name: ``--backbone image=hf:DIR --backbone text=hf:DIR`` on a table.

The Hugging Face models are tiny, randomly initialised, built here from small configs and written
with ``save_pretrained``: nothing is downloaded (``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from bmnas.cli.main import main
from bmnas.core.config import Config, ConfigError
from bmnas.core.errors import DataError, MissingDependencyError
from bmnas.features import table as tb
from bmnas.features.backbones import hf
from bmnas.features.backbones.base import BackboneError
from bmnas.features.backbones.named import named_backbone
from bmnas.features.extract import extract_features
from bmnas.features.pipeline import load_data
from bmnas.features.pooling import pool_feature
from helpers import FAST, table_stand_in, write_photos

transformers = pytest.importorskip("transformers")

WORDS = ["a", "small", "big", "odd", "thing", "number", *map(str, range(100))]
MAX_LENGTH = 12


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def save_vit(path: Path, seed: int = 0, mean: float = 0.5) -> Path:
    torch.manual_seed(seed)
    config = transformers.ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
    )
    transformers.ViTModel(config).save_pretrained(path)
    processor = transformers.ViTImageProcessor(
        size={"height": 32, "width": 32}, image_mean=[mean] * 3, image_std=[0.5] * 3
    )
    processor.save_pretrained(path)
    return path


def save_bert(path: Path) -> Path:
    torch.manual_seed(1)
    path.mkdir(parents=True, exist_ok=True)
    vocab = path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    tokenizer = transformers.BertTokenizerFast(vocab_file=str(vocab))
    config = transformers.BertConfig(
        vocab_size=5 + len(WORDS),
        hidden_size=16,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    transformers.BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    return {"vit": save_vit(root / "vit"), "bert": save_bert(root / "bert")}


def test_default_layers_are_evenly_spaced_and_end_with_the_last():
    assert hf.default_layers(12) == (3, 6, 9, 12)
    assert hf.default_layers(2) == (1, 2)
    assert hf.default_layers(6) == (2, 3, 4, 6)


def test_run_with_hf_backbones_from_the_cli_records_them_and_hits_the_cache(tmp_path, models):
    write_photos(tmp_path, n=30)
    argv = ["run", "--table", str(tmp_path / "photos.csv"), "--label", "label"]
    argv += ["--backbone", f"image=hf:{models['vit']}", "--backbone", f"text=hf:{models['bert']}"]
    argv += ["--backbone-option", f"max_length={MAX_LENGTH}", "--no-baselines", *FAST]
    argv += ["--set", "train.select_folds=0", "--cache", str(tmp_path / "cache"), "--quiet"]
    for out in ("a", "b"):
        assert main([*argv, "--out", str(tmp_path / out)]) == 0
    first, second = (json.loads((tmp_path / o / "metrics.json").read_text())["data"] for o in "ab")
    mods = first["info"]["modalities"]
    assert mods["path"] == {"kind": "image", "columns": ["path"], "backbone": f"hf:{models['vit']}"}
    assert mods["caption"]["backbone"] == f"hf:{models['bert']}"
    assert first["info"]["cache_hit"] is False and second["info"]["cache_hit"] is True
    assert first["info"]["cache_dirs"] == second["info"]["cache_dirs"]
    # ViT: 2 blocks -> hidden1, hidden2; BERT: 3 blocks -> hidden1..3 (round(3k/4), k = 1..4)
    features = json.loads((tmp_path / "a" / "fingerprint.json").read_text())["data"]["features"]
    assert features == {
        "path.hidden1": [4, 16],
        "path.hidden2": [4, 16],
        "caption.hidden1": [4, 16],
        "caption.hidden2": [4, 16],
        "caption.hidden3": [4, 16],
    }


def test_features_equal_the_models_own_hidden_states_pooled(tmp_path, models):
    csv = write_photos(tmp_path, n=12)
    df = pd.read_csv(csv)
    df["path"] = [str(tmp_path / p) for p in df["path"]]
    df["caption"] = [c + " odd" * (i % 4) for i, c in enumerate(df["caption"])]  # 7 to 10 tokens
    df["split"] = ["train"] * 6 + ["val"] * 3 + ["test"] * 3
    specs = {"path": f"hf:{models['vit']}", "text": f"hf:{models['bert']}"}  # by name, by kind
    data = tb.table_features(
        df, "label", length=4, root=tmp_path, backbone_specs=specs, max_length=MAX_LENGTH, batch_size=5
    )
    train = data["train"].features
    assert {k: v.shape for k, v in train.items()} == {
        "path.hidden1": (6, 4, 16),
        "path.hidden2": (6, 4, 16),
        "caption.hidden1": (6, 4, 16),
        "caption.hidden2": (6, 4, 16),
        "caption.hidden3": (6, 4, 16),
    }
    vit = transformers.AutoModel.from_pretrained(models["vit"]).eval()
    processor = transformers.AutoImageProcessor.from_pretrained(models["vit"])
    images = tb.ImageFiles(list(df["path"][:6]), 224)[0:6]
    with torch.no_grad():
        pixels = processor(images=[im.transpose(1, 2, 0) for im in images], return_tensors="pt")
        states = vit(**pixels, output_hidden_states=True).hidden_states
    for i in (1, 2):  # (B, T, C) token states -> (B, C, T) -> pooled to L = 4, (B, L, C)
        want = pool_feature(states[i].transpose(1, 2), 4).numpy()
        np.testing.assert_allclose(train[f"path.hidden{i}"], want, atol=1e-5)
    bert = transformers.AutoModel.from_pretrained(models["bert"]).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(models["bert"])
    lengths = set()
    for row, text in enumerate(df["caption"][:6]):  # one text at a time: no padding at all
        with torch.no_grad():
            ids = tokenizer([text], return_tensors="pt")
            states = bert(**ids, output_hidden_states=True).hidden_states
        lengths.add(ids["input_ids"].shape[1])
        for i in (1, 2, 3):
            tokens = F.interpolate(states[i].transpose(1, 2), MAX_LENGTH, mode="linear", align_corners=True)
            want = pool_feature(tokens, 4).numpy()[0]
            np.testing.assert_allclose(train[f"caption.hidden{i}"][row], want, atol=1e-5)
    assert lengths == {7, 8, 9, 10}  # texts of different lengths, batched together with padding
    assert data.info["modalities"]["caption"]["backbone"] == specs["text"]


def test_the_cache_key_follows_the_weights_and_the_preprocessing(tmp_path, models):
    base = named_backbone(f"hf:{models['vit']}", "image", "image").weights_hash()
    other_weights = named_backbone(f"hf:{save_vit(tmp_path / 'v1', seed=1)}", "image", "image")
    other_mean = named_backbone(f"hf:{save_vit(tmp_path / 'v2', mean=0.4)}", "image", "image")
    same = named_backbone(f"hf:{save_vit(tmp_path / 'v3')}", "image", "image")
    assert same.weights_hash() == base
    assert other_weights.weights_hash() != base and other_mean.weights_hash() != base
    text = named_backbone(f"hf:{models['bert']}", "t", "text", max_length=8)
    assert text.weights_hash() != named_backbone(f"hf:{models['bert']}", "t", "text").weights_hash()
    assert list(text.layers) == ["hidden1", "hidden2", "hidden3"] and text.name == f"hf:{models['bert']}"


def test_a_python_factory_is_recorded_as_python_and_default_as_what_it_stands_for(tmp_path, monkeypatch):
    csv = write_photos(tmp_path, n=24)
    stand_ins = {kind: functools.partial(table_stand_in, kind) for kind in ("image", "text")}
    data = tb.table_features(csv, "label", length=2, root=tmp_path, backbones=stand_ins)
    assert {m["backbone"] for m in data.info["modalities"].values()} == {"python"}
    monkeypatch.setattr(tb, "default_backbone", table_stand_in)  # (the shipped ones, stood in for)
    data = tb.table_features(csv, "label", length=2, root=tmp_path, backbone_specs={"image": "default"})
    recorded = {k: m["backbone"] for k, m in data.info["modalities"].items()}
    assert recorded == {"path": "efficientnet-lite0", "caption": "minilm-l6"}


def test_without_transformers_the_error_names_the_extra(monkeypatch):
    real = hf.optional

    def missing(module, needs, install):
        if module == "transformers":
            raise MissingDependencyError(f"{needs} needs transformers: {install}")
        return real(module, needs, install)

    monkeypatch.setattr(hf, "optional", missing)
    with pytest.raises(MissingDependencyError, match=r"pip install 'bmnas\[hf\]'"):
        named_backbone("hf:google/vit-base-patch16-224", "image", "image")


def test_bad_specs_and_keys_are_refused_in_one_line(tmp_path, models, capsys):
    write_photos(tmp_path, n=24)
    argv = ["run", "--table", str(tmp_path / "photos.csv"), "--label", "label", "--out", str(tmp_path / "r")]
    argv += ["--cache", str(tmp_path / "c")]
    assert main([*argv, "--backbone", "image=resnet50"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == (
        "bmnas: error: --backbone image: unknown backbone 'resnet50'; give one of default, "
        "efficientnet-lite0, minilm-l6, hf:<hub name or local directory>"
    )
    assert main([*argv, "--backbone", "caption=efficientnet-lite0"]) == 2
    assert "'efficientnet-lite0' reads images, not texts" in capsys.readouterr().err
    assert main([*argv, "--backbone", "nosuch=default"]) == 2
    assert (
        "no modality 'nosuch'; name an image or text modality ['caption', 'path']" in capsys.readouterr().err
    )
    assert main([*argv, "--backbone", "image"]) == 2
    assert "must look like MODALITY=SPEC" in capsys.readouterr().err
    assert main([*argv, "--backbone", f"image=hf:{tmp_path / 'nothing'}"]) == 2
    assert f"hf:{tmp_path / 'nothing'}: cannot load its config" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    with pytest.raises(BackboneError, match=r"layers \[5\] out of range; the model has hidden states 0\.\.2"):
        hf.hf_backbone(str(models["vit"]), "image", layers=[1, 5])
    with pytest.raises(DataError, match="'numeric' is a vector modality"):
        tb.backbone_specs_of((tb.Modality("numeric", "vector", ("a",)),), {"numeric": "default"})


def test_data_backbones_in_the_config(tmp_path):
    cfg = Config.from_sources(None, ["data.backbones.image=hf:google/vit-base-patch16-224"])
    assert cfg.data.backbones == {"image": "hf:google/vit-base-patch16-224"}
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text(cfg.to_commented_yaml())
    assert Config.from_sources(yaml_file).data.backbones == cfg.data.backbones
    with pytest.raises(ConfigError, match="data.backbones: expected a mapping"):
        Config.from_sources(None, ["data.backbones=hf:x"])
    with pytest.raises(ConfigError, match="data.backbones.2x: keys are modality names"):
        Config.from_dict({"data": {"backbones": {"2x": "default"}}})
    on_dataset = Config.from_sources(None, ["data.dataset=avmnist", "data.backbones.image=default"])
    with pytest.raises(ConfigError, match="names backbones for a --table; --dataset and --data DIR bring"):
        load_data(on_dataset, tmp_path, progress=False)
    with pytest.raises(ConfigError, match="--backbone picks a --table's backbones; pass --table FILE"):
        main_config(["--data", str(tmp_path), "--backbone", "image=default"])


def main_config(extra: list[str]):
    from bmnas.cli.main import build_parser
    from bmnas.cli.options import resolve_config

    return resolve_config(build_parser().parse_args(["run", "--out", "x", *extra]))


def test_a_convolutional_model_gives_maps_pooled_as_maps(tmp_path):
    torch.manual_seed(0)
    config = transformers.ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, image_size=32)
    transformers.ConvNextModel(config).save_pretrained(tmp_path)
    transformers.ConvNextImageProcessor(size={"shortest_edge": 32}).save_pretrained(tmp_path)
    backbone = hf.hf_backbone(str(tmp_path), "img")  # the kind inferred from the config: image
    images = np.random.default_rng(0).integers(0, 255, (3, 3, 40, 40), dtype=np.uint8)
    out = extract_features(backbone, images, length=4, progress=False)
    assert {k: v.shape for k, v in out.items()} == {"img.hidden1": (3, 4, 8), "img.hidden2": (3, 4, 16)}
    with torch.no_grad():
        states = backbone.module.model(**backbone.preprocess(images), output_hidden_states=True).hidden_states
    assert states[2].shape == (3, 16, 4, 4)  # (B, C, H, W): a 2 × 2 grid of L = 4
    np.testing.assert_allclose(out["img.hidden2"], pool_feature(states[2], 4).numpy(), atol=1e-6)
