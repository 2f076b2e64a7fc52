"""The JanusFlow processor, reimplemented without torch: tokenizer and special tags, the chat
template, generation / understanding prompts, and image preprocessing, all read from the files of
an official checkpoint folder (`tokenizer.json`, `processor_config.json`,
`preprocessor_config.json`). Ids are read from the files, never assumed.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np
from PIL import Image

SYSTEM_PROMPT = (
    "You are a helpful language and vision assistant. "
    "You are able to understand the visual content that the user provides, "
    "and assist the user with a variety of tasks using natural language."
)
EOS_TEXT = "<｜end▁of▁sentence｜>"
BOS_TEXT = "<｜begin▁of▁sentence｜>"
PAD_TEXT = "<｜▁pad▁｜>"
# sft_format → (user role, assistant role); both use sep "\n\n" and sep2 = EOS (DeepSeek style)
TEMPLATES = {"deepseek_old": ("User", "Assistant"), "deepseek": ("<|User|>", "<|Assistant|>")}


class ProcessorError(ValueError):
    pass


def _read_json(folder: str, name: str, required: bool = True) -> dict:
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        if required:
            raise ProcessorError(f"{path}: file not found")
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ProcessorError(f"{path}: invalid JSON ({e})") from None


def sft_prompt(conversation: Sequence[dict], system_prompt: str = SYSTEM_PROMPT) -> str:
    """The official DeepSeek-style template: `system\\n\\nUser: q\\n\\nAssistant: a<eos>User: …Assistant:`."""
    seps = ("\n\n", EOS_TEXT)
    out = "" if not system_prompt else system_prompt + seps[0]
    for i, msg in enumerate(conversation):
        content = msg["content"].strip()
        out += f"{msg['role']}: {content}{seps[i % 2]}" if content else f"{msg['role']}:"
    return out.strip()


class Processor:
    """Tokenizer + templates + image preprocessing of one checkpoint folder."""

    def __init__(self, folder: str, family: str = "janusflow"):
        from tokenizers import AddedToken, Tokenizer

        if family not in ("janusflow", "janus"):
            raise ProcessorError(f"unknown model family {family!r}")
        self.folder = folder
        self.family = family
        tok_path = os.path.join(folder, "tokenizer.json")
        if not os.path.isfile(tok_path):
            raise ProcessorError(f"{tok_path}: file not found")
        try:
            self.tokenizer = Tokenizer.from_file(tok_path)
        except Exception as e:  # the tokenizers library raises plain Exceptions
            raise ProcessorError(f"{tok_path}: cannot be read ({e})") from None
        pc = _read_json(folder, "processor_config.json")
        ip = _read_json(folder, "preprocessor_config.json")
        self.image_tag = pc.get("image_tag", "<image_placeholder>")
        self.image_start_tag = pc.get("image_start_tag", "<begin_of_image>")
        self.image_end_tag = pc.get("image_end_tag", "<end_of_image>")
        self.image_gen_tag = pc.get("image_gen_tag", "<｜begin▁of▁generation｜>")
        self.num_image_tokens = int(pc.get("num_image_tokens", 576))
        self.add_special_token = bool(pc.get("add_special_token", False))
        self.sft_format = pc.get("sft_format", "deepseek")
        if self.sft_format not in TEMPLATES:
            raise ProcessorError(f"processor_config.json: unknown sft_format {self.sft_format!r}")
        self.roles = TEMPLATES[self.sft_format]
        # Tags missing from the vocabulary are added in the official order (next free id each);
        # Janus's processor adds only the image tag.
        tags = (self.image_tag, self.image_gen_tag, self.image_start_tag, self.image_end_tag)
        for tag in tags if family == "janusflow" else tags[:1]:
            if self.tokenizer.token_to_id(tag) is None:
                self.tokenizer.add_special_tokens([AddedToken(tag, special=True, normalized=False)])
        self.image_id = self.tokenizer.token_to_id(self.image_tag)
        self.image_start_id = self.tokenizer.token_to_id(self.image_start_tag)
        self.image_end_id = self.tokenizer.token_to_id(self.image_end_tag)
        self.image_gen_id = self.tokenizer.token_to_id(self.image_gen_tag)  # None for Janus
        self.bos_id = self.tokenizer.token_to_id(BOS_TEXT)
        self.eos_id = self.tokenizer.token_to_id(EOS_TEXT)
        pad = self.tokenizer.token_to_id(pc.get("pad_tag", PAD_TEXT))
        if family == "janus" and pad is None:
            raise ProcessorError(f"{tok_path}: no {pc.get('pad_tag', PAD_TEXT)} token (Janus's CFG needs the pad id)")
        self.pad_id = pad if pad is not None else self.eos_id
        if self.eos_id is None:
            raise ProcessorError(f"{tok_path}: no {EOS_TEXT} token")
        # image preprocessing (VLMImageProcessor)
        if "image_size" not in ip:
            raise ProcessorError(f"{os.path.join(folder, 'preprocessor_config.json')}: missing image_size")
        self.image_size = int(ip["image_size"])
        self.min_size = int(ip.get("min_size", 14))
        mean = ip.get("image_mean", (0.48145466, 0.4578275, 0.40821073))
        std = ip.get("image_std", (0.26862954, 0.26130258, 0.27577711))
        self.image_mean = None if mean is None else np.asarray(mean, np.float64)
        self.image_std = None if std is None else np.asarray(std, np.float64)
        self.rescale_factor = float(ip.get("rescale_factor", 1 / 255))
        self.do_normalize = bool(ip.get("do_normalize", True))
        # the official processor derives the padding colour from the mean (file field is informational)
        self.background_color = (127, 127, 127) if mean is None else tuple(int(x * 255) for x in mean)

    @classmethod
    def from_pretrained(cls, folder: str, family: str = "janusflow") -> "Processor":
        return cls(folder, family)

    @property
    def image_slots(self) -> int:
        """Embedding slots per image in the understanding prompt: JanusFlow also overwrites BOI."""
        return self.num_image_tokens + (1 if self.family == "janusflow" else 0)

    def __len__(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    # --- text --------------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Token ids with BOS (the tokenizer's post-processor adds it, as the official tokenizer does)."""
        return self.tokenizer.encode(text).ids

    def decode(self, ids) -> str:
        """Text up to the first EOS/pad, special tokens removed."""
        out = []
        for i in np.asarray(ids).reshape(-1).tolist():
            if i in (self.eos_id, self.pad_id):
                break
            out.append(int(i))
        return self.tokenizer.decode(out, skip_special_tokens=True)

    def generation_prompt(self, prompt: str) -> str:
        msgs = [{"role": self.roles[0], "content": prompt}, {"role": self.roles[1], "content": ""}]
        return sft_prompt(msgs, system_prompt="") + self.image_start_tag

    def left_pad(self, rows: Sequence[Sequence[int]], length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        length = max(len(r) for r in rows) if length is None else length
        ids = np.full((len(rows), length), self.pad_id, np.int32)
        mask = np.zeros((len(rows), length), np.int32)
        for i, r in enumerate(rows):
            if len(r) > length:
                raise ProcessorError(f"prompt of {len(r)} tokens is longer than {length}")
            if len(r):
                ids[i, -len(r) :] = r
                mask[i, -len(r) :] = 1
        return ids, mask

    def encode_generation(self, prompts: Sequence[str], length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Left-padded generation prompts `[B, L]` (each ends with the image start tag) and their mask."""
        return self.left_pad([self.encode(self.generation_prompt(p)) for p in prompts], length)

    # --- images ------------------------------------------------------------------------------

    def preprocess_image(self, image) -> np.ndarray:
        """uint8 HWC array or PIL image → float32 `[S, S, 3]`: aspect-keeping bicubic resize, centred
        on a square of the background colour, rescaled and normalised."""
        img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, np.uint8))
        img = img.convert("RGB")
        w, h = img.size
        if w <= 0 or h <= 0:
            raise ProcessorError(f"invalid image size {img.size}")
        s = self.image_size
        big = max(w, h)
        size_hw = (max(int(h / big * s), self.min_size), max(int(w / big * s), self.min_size))
        img = img.resize((size_hw[1], size_hw[0]), Image.Resampling.BICUBIC)
        w, h = img.size
        if w != h:
            side = max(w, h)
            canvas = Image.new("RGB", (side, side), self.background_color)
            canvas.paste(img, (0, (side - h) // 2) if w > h else ((side - w) // 2, 0))
            img = canvas
        x = np.asarray(img, np.float64) * self.rescale_factor
        if self.do_normalize and self.image_mean is not None:
            x = (x - self.image_mean) / self.image_std
        return x.astype(np.float32)

    # --- understanding -----------------------------------------------------------------------

    def understanding_conversation(self, question: str) -> list[dict]:
        return [
            {"role": self.roles[0], "content": f"{self.image_tag}\n{question}"},
            {"role": self.roles[1], "content": ""},
        ]

    def _expand(self, ids: list[int]) -> list[int]:
        out = []
        for i in ids:
            if i == self.image_id:
                if self.add_special_token:
                    out.append(i)
                out += [self.image_start_id] + [self.image_id] * self.num_image_tokens + [self.image_end_id]
            else:
                out.append(i)
        return out

    def encode_understanding(
        self, images: Sequence, conversations: Sequence, system_prompt: str = SYSTEM_PROMPT
    ) -> dict:
        """One image per row; `conversations[i]` is a question string or a list of {role, content}
        messages (with one image placeholder). Returns the batched model inputs (left-padded)."""
        if len(images) != len(conversations):
            raise ProcessorError(f"{len(images)} images for {len(conversations)} conversations")
        rows = []
        for conv in conversations:
            msgs = self.understanding_conversation(conv) if isinstance(conv, str) else list(conv)
            ids = self._expand(self.encode(sft_prompt(msgs, system_prompt)))
            if ids.count(self.image_start_id) != 1:
                raise ProcessorError("each conversation needs exactly one image placeholder")
            rows.append(ids)
        input_ids, mask = self.left_pad(rows)
        seq_mask = input_ids == self.image_id
        if self.family == "janusflow":  # JanusFlow's BOI slot takes `beg_of_und_embed`
            seq_mask |= input_ids == self.image_start_id
        seq_mask &= mask == 1
        pixels = np.stack([self.preprocess_image(im) for im in images])[:, None]
        emb_mask = np.ones((len(rows), 1, self.image_slots), bool)
        return dict(
            input_ids=input_ids,
            attention_mask=mask,
            pixel_values=pixels,
            images_seq_mask=seq_mask,
            images_emb_mask=emb_mask,
        )
