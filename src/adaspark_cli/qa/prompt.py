"""The one prompt format of a video question, shared by the QA session and training.

The model's chat template writes one user turn holding the video and then the question, followed by the
assistant header. The video comes first, so the prefix up to and including ``<|vision_end|>`` (system prompt
and video) does not depend on the question: it is prefilled once, and each question's ids go after it.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import AdasparkError

PLACEHOLDER_QUESTION = "?"  # the question in a prompt built for its prefix only


class PromptFormat:
    """Chat text and token ids of the prompt, as the processor's chat template writes them."""

    def __init__(self, processor: Any, model_config: Any) -> None:
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.video_token_id = int(model_config.video_token_id)
        self.vision_end_token_id = int(model_config.vision_end_token_id)

    def chat_text(self, question: str = PLACEHOLDER_QUESTION) -> str:
        """The whole prompt as text, with one video placeholder (the processor expands it)."""
        messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def _ids(self, text: str) -> torch.Tensor:
        return self.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]

    def prefix_length(self, ids: torch.Tensor) -> int:
        """Tokens up to and including the last <|vision_end|> of a prompt's `ids`."""
        ends = (ids == self.vision_end_token_id).nonzero().flatten()
        if ends.numel() == 0:
            raise AdasparkError("the chat template produced no <|vision_end|> token; the processor does not match the model")
        return int(ends[-1]) + 1

    def prompt_ids(self, n_video_tokens: int, question: str = PLACEHOLDER_QUESTION) -> torch.Tensor:
        """Token ids of the whole prompt with `n_video_tokens` video pads: the text is tokenized with one pad,
        which is then repeated (tokenizing 32K pads one by one costs a noticeable fraction of a second)."""
        ids = self._ids(self.chat_text(question))
        at = (ids == self.video_token_id).nonzero().flatten()
        if at.numel() != 1:
            raise AdasparkError(f"the chat template gave {at.numel()} video placeholders, expected one; this is a bug")
        i = int(at[0])
        pads = torch.full((n_video_tokens,), self.video_token_id, dtype=ids.dtype)
        return torch.cat([ids[:i], pads, ids[i + 1 :]])

    def prefix_ids(self, n_video_tokens: int) -> torch.Tensor:
        """The question-independent prefix: system prompt and video, up to and including <|vision_end|>."""
        ids = self.prompt_ids(n_video_tokens)
        return ids[: self.prefix_length(ids)]

    def question_ids(self, question: str) -> torch.Tensor:
        """Token ids after <|vision_end|> for `question` (question text and the assistant header)."""
        ids = self._ids(self.chat_text(question))
        return ids[self.prefix_length(ids) :]
