"""A small tokenizer for the shapes world, saved in the official JanusFlow tokenizer file layout.

Type: byte-level BPE (the DeepSeek/JanusFlow tokenizer family), trained with the `tokenizers` library
on every string the world's prompts contain — canonical captions and paraphrases (plain and inside the
generation prompt), the understanding prompt (system prompt, `User:`/`Assistant:` template, questions)
followed by each answer, and every caption / question / answer alone and after a space — with NO
vocabulary limit: training stops when every pre-token of that
corpus is a single token (≈ 190 merges over the 256 byte tokens; no unknown token can occur, any
text still encodes byte by byte). Then seven special added tokens follow, in the order of the
fixture: BOS `<｜begin▁of▁sentence｜>`, EOS `<｜end▁of▁sentence｜>`, pad `<｜▁pad▁｜>`,
`<image_placeholder>`, `<begin_of_image>`, `<end_of_image>`, `<｜begin▁of▁generation｜>`.
The post-processor prepends BOS (as the official tokenizer does). The decoder is byte-level followed
by stripping ONE leading space of the decoded text, so the answer ids of `" top left"` (the form the
training pipeline encodes after `Assistant:`) decode to `"top left"`. Training is deterministic
(same files byte for byte).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence

from janusflow_jax import processing
from janusflow_jax.shapes import world

IMAGE_TAG = "<image_placeholder>"
IMAGE_START_TAG = "<begin_of_image>"
IMAGE_END_TAG = "<end_of_image>"
IMAGE_GEN_TAG = "<｜begin▁of▁generation｜>"
SPECIAL_TOKENS = (
    processing.BOS_TEXT,
    processing.EOS_TEXT,
    processing.PAD_TEXT,
    IMAGE_TAG,
    IMAGE_START_TAG,
    IMAGE_END_TAG,
    IMAGE_GEN_TAG,
)
MODEL_MAX_LENGTH = 1000000000000000019884624838656  # as the official tokenizer_config.json


def template_roles(sft_format: str) -> tuple[str, str]:
    """The (user, assistant) role names of a chat template (ValueError for an unknown one)."""
    if sft_format not in processing.TEMPLATES:
        raise ValueError(f"unknown sft_format {sft_format!r}; one of {sorted(processing.TEMPLATES)}")
    return processing.TEMPLATES[sft_format]


def prompt_texts(sft_format: str = "deepseek_old") -> list[str]:
    """Every full text the shapes world puts through the tokenizer (special tags included), sorted."""
    user, assistant = template_roles(sft_format)
    out: set[str] = set()
    for text in world.corpus_strings():  # each world string alone, and after a space (mid-text)
        out.update((text, " " + text))
    for a in world.all_combinations():
        for cap in (a.caption(), *a.paraphrases()):
            out.add(cap)  # text-only use
            msgs = [{"role": user, "content": cap}, {"role": assistant, "content": ""}]
            out.add(processing.sft_prompt(msgs, system_prompt="") + IMAGE_START_TAG)  # generation
        for q, ans in a.qa():
            msgs = [{"role": user, "content": f"{IMAGE_TAG}\n{q}"}, {"role": assistant, "content": ""}]
            prompt = processing.sft_prompt(msgs, processing.SYSTEM_PROMPT)
            out.add(prompt + " " + ans + processing.EOS_TEXT)  # understanding (+ answer)
            out.add(processing.sft_prompt(msgs, system_prompt="") + " " + ans + processing.EOS_TEXT)
    return sorted(out)


def cut_at_special_tokens(texts: Iterable[str]) -> list[str]:
    """`texts` cut at the special tags (as encoding sees them), empty pieces dropped, deduplicated, sorted."""
    pat = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS))
    return sorted({p for t in texts for p in pat.split(t) if p})


def training_corpus(sft_format: str = "deepseek_old") -> list[str]:
    """`prompt_texts` cut at the special tags (as encoding sees them), empty pieces dropped."""
    return cut_at_special_tokens(prompt_texts(sft_format))


def build_tokenizer(sft_format: str = "deepseek_old", *, corpus: Sequence[str] | None = None):
    """The trained `tokenizers.Tokenizer` (special tokens and BOS post-processor included), trained on
    `corpus` (default: this world's `training_corpus(sft_format)`; the GenEval world passes its own)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    template_roles(sft_format)  # an unknown template is an error even with an explicit corpus
    if corpus is None:
        corpus = training_corpus(sft_format)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=1 << 16,  # no limit in practice: merging stops when every pre-token is whole
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(corpus, trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    bos = processing.BOS_TEXT
    bos_id = tok.token_to_id(bos)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos}:1 $B:1", special_tokens=[(bos, bos_id)]
    )
    tok.decoder = decoders.Sequence([decoders.ByteLevel(), decoders.Strip(" ", 1, 0)])
    return tok


def _dump(path: str, obj) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def train_tokenizer(
    out_dir: str,
    *,
    num_image_tokens: int = 64,
    image_size: int = 64,
    sft_format: str = "deepseek_old",
    corpus: Sequence[str] | None = None,
) -> str:
    """Trains the tokenizer (on `corpus`, default this world's; see `build_tokenizer`) and writes the five
    processor files of a JanusFlow checkpoint folder (`tokenizer.json`, `tokenizer_config.json`,
    `special_tokens_map.json`, `processor_config.json`, `preprocessor_config.json`) into `out_dir`,
    loadable by `janusflow_jax.processing.Processor`. Returns `out_dir`. Deterministic: the same
    arguments give the same bytes."""
    tok = build_tokenizer(sft_format, corpus=corpus)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "tokenizer.json"), "w", encoding="utf-8") as f:
        f.write(tok.to_str(pretty=True))
        f.write("\n")
    added = {
        str(tok.token_to_id(t)): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for t in SPECIAL_TOKENS
    }
    bos, eos, pad = processing.BOS_TEXT, processing.EOS_TEXT, processing.PAD_TEXT
    _dump(
        os.path.join(out_dir, "tokenizer_config.json"),
        {
            "add_bos_token": True,
            "add_eos_token": False,
            "add_prefix_space": None,
            "added_tokens_decoder": added,
            "bos_token": bos,
            "clean_up_tokenization_spaces": False,
            "eos_token": eos,
            "extra_special_tokens": {},
            "legacy": False,
            "model_max_length": MODEL_MAX_LENGTH,
            "pad_token": pad,
            "tokenizer_class": "LlamaTokenizer",
            "unk_token": None,
            "use_default_system_prompt": False,
        },
    )
    _dump(os.path.join(out_dir, "special_tokens_map.json"), {"bos_token": bos, "eos_token": eos, "pad_token": pad})
    _dump(
        os.path.join(out_dir, "processor_config.json"),
        {
            "add_special_token": False,
            "ignore_id": -100,
            "image_end_tag": IMAGE_END_TAG,
            "image_tag": IMAGE_TAG,
            "mask_prompt": True,
            "num_image_tokens": int(num_image_tokens),
            "processor_class": "VLChatProcessor",
            "sft_format": sft_format,
            "image_gen_tag": IMAGE_GEN_TAG,
            "image_start_tag": IMAGE_START_TAG,
        },
    )
    _dump(
        os.path.join(out_dir, "preprocessor_config.json"),
        {
            "background_color": [127, 127, 127],
            "do_normalize": True,
            "image_mean": [0.5, 0.5, 0.5],
            "image_processor_type": "VLMImageProcessor",
            "image_size": int(image_size),
            "image_std": [0.5, 0.5, 0.5],
            "min_size": 14,
            "processor_class": "VLChatProcessor",
            "rescale_factor": 0.00392156862745098,
        },
    )
    return out_dir
