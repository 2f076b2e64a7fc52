"""The processor against the official one's outputs (fixtures made by the official VLChatProcessor)."""

import json
import shutil

import numpy as np
import pytest

from conftest import TINY_DIR, nchw_to_nhwc
from janusflow_jax.processing import Processor, ProcessorError, sft_prompt

MANIFEST = json.loads((TINY_DIR / "manifest.json").read_text())


@pytest.fixture(scope="module")
def proc():
    return Processor.from_pretrained(str(TINY_DIR))


def test_special_token_ids(proc):
    ids = MANIFEST["token_ids"]
    assert (proc.bos_id, proc.eos_id, proc.pad_id) == (ids["bos"], ids["eos"], ids["pad"])
    assert (proc.image_id, proc.image_start_id, proc.image_end_id, proc.image_gen_id) == (
        ids["image_placeholder"],
        ids["image_start"],
        ids["image_end"],
        ids["image_gen"],
    )
    assert len(proc) == ids["tokenizer_len"]


def test_prompts(proc, npz):
    for q, want in zip(MANIFEST["spec"]["und_questions"], MANIFEST["understanding"]["sft_format"]):
        assert sft_prompt(proc.understanding_conversation(q)) == want
    assert proc.generation_prompt(MANIFEST["spec"]["gen_prompt"]) == MANIFEST["generation_prompt_text"]
    ids, mask = proc.encode_generation([MANIFEST["spec"]["gen_prompt"]])
    np.testing.assert_array_equal(ids[0], npz("gen_velocity")["prompt_ids"])
    assert mask.all()


def test_understanding_inputs(proc, npz):
    d = npz("understanding")
    out = proc.encode_understanding([d["image_0"], d["image_1"]], MANIFEST["spec"]["und_questions"])
    for k in ("input_ids", "attention_mask", "images_seq_mask", "images_emb_mask"):
        np.testing.assert_array_equal(out[k], d[k], err_msg=k)
    # measured max |diff| 4.8e-7 (float32 rounding of the normalisation only; identical uint8 resize)
    assert np.abs(out["pixel_values"] - nchw_to_nhwc(d["pixel_values"])).max() < 1e-5


def test_decode_stops_at_eos(proc):
    ids = proc.encode("hello there")[1:] + [proc.eos_id, 65, 66]
    assert proc.decode(ids) == "hello there"


def test_missing_tag_is_added_with_next_id(tmp_path):
    """A tag absent from the vocabulary is added as the next id, as the official processor does."""
    folder = tmp_path / "m"
    shutil.copytree(TINY_DIR, folder, ignore=shutil.ignore_patterns("*.npz", "*.safetensors", "vae"))
    tok = json.loads((folder / "tokenizer.json").read_text())
    gen = "<｜begin▁of▁generation｜>"
    tok["added_tokens"] = [a for a in tok["added_tokens"] if a["content"] != gen]
    (folder / "tokenizer.json").write_text(json.dumps(tok))
    p = Processor.from_pretrained(str(folder))
    assert p.image_gen_id == MANIFEST["token_ids"]["tokenizer_len"] - 1 == 262
    assert p.tokenizer.token_to_id(gen) == 262 and len(p) == 263


def test_bad_files(tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(TINY_DIR, folder, ignore=shutil.ignore_patterns("*.npz", "*.safetensors", "vae"))
    (folder / "processor_config.json").write_text("{")
    with pytest.raises(ProcessorError, match="processor_config.json: invalid JSON"):
        Processor.from_pretrained(str(folder))
    (folder / "processor_config.json").unlink()
    with pytest.raises(ProcessorError, match="processor_config.json: file not found"):
        Processor.from_pretrained(str(folder))
