"""Vision-language backbones for ST-VLM: the embedded CPU VLM, processors, and the checks a recipe's images need.

ST-VLM (Zhao et al., AAAI 2026) forecasts with a vision-language model reading a rendered image of the window
(:mod:`st_instruct.samples.render`) beside the text and the ST tokens. Any LLaVA, Qwen2-VL / Qwen2.5-VL or Idefics3 /
SmolVLM checkpoint works by Hub id (``AutoModelForImageTextToText`` + ``AutoProcessor``) on a machine that has its
weights. Offline there is no pretrained vision-language model, so the project ships an **embedded VLM**
(``smollm2-135m-vlm``): LLaVA's architecture (``LlavaForConditionalGeneration``) whose language model is the
pretrained SmolLM2-135M-Instruct and whose vision tower is a small SigLIP-style encoder (:data:`EMBEDDED_VISION`,
112 x 112 images in 16 x 16 patches: 49 image tokens) initialised from a fixed seed and **trained here**, in the
forecasting run itself -- no pretrained vision weights exist offline, and the README says so. Its processor is
``LlavaProcessor`` with SigLIP's PIL image processor (no torchvision, docs/design.md §8) and a ChatML template that
knows image parts (:func:`chatml_vision_template`).
"""

from __future__ import annotations

from typing import Any

import torch
from tokenizers import AddedToken
from transformers import (
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    Qwen2VLProcessor,
    SiglipImageProcessorPil,
    SiglipVisionConfig,
)
from transformers.processing_utils import ProcessorMixin

from st_instruct.models.patching import image_size_of, unwrap
from st_instruct.samples.st_tokens import grow_embeddings

IMAGE_TOKEN = "<image>"
# the text standing for one image in each family's chat template (the processor expands it to the image's tokens)
IMAGE_PLACEHOLDERS = {"llava": IMAGE_TOKEN, "idefics3": IMAGE_TOKEN, "smolvlm": IMAGE_TOKEN,
                      "qwen2_vl": "<|vision_start|><|image_pad|><|vision_end|>",
                      "qwen2_5_vl": "<|vision_start|><|image_pad|><|vision_end|>"}
# the embedded VLM's vision tower: SigLIP-style, small enough to train on two CPU cores beside the forecaster
EMBEDDED_VISION = dict(hidden_size=192, intermediate_size=768, num_hidden_layers=4, num_attention_heads=3,
                       image_size=112, patch_size=16)
EMBEDDED_VISION_SEED = 0  # the tower's initialisation: fixed, so a saved model's base rebuilds identically


def chatml_vision_template(image_text: str) -> str:
    """A ChatML chat template (SmolLM2's, with its default system turn) whose message content may be a string or a
    list of ``{"type": "text", "text": ...}`` / ``{"type": "image"}`` parts; an image part renders as
    ``image_text``. Its generation prompt is a prefix of the conversation, as the answer labelling needs."""
    return (
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
        "{% endif %}{{ '<|im_start|>' + message['role'] + '\n' }}"
        "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
        "{% for part in message['content'] %}{% if part['type'] == 'image' %}{{ '" + image_text + "' }}"
        "{% else %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
        "{{ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def add_image_token(tokenizer: Any) -> int:
    """Add :data:`IMAGE_TOKEN` to ``tokenizer`` as a special token (idempotent); returns its id."""
    if IMAGE_TOKEN not in tokenizer.get_added_vocab():
        tokenizer.add_special_tokens({"extra_special_tokens": [AddedToken(IMAGE_TOKEN, special=True,
                                                                          normalized=False)]},
                                     replace_extra_special_tokens=False)
    return tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)


def build_embedded_vlm(language_model: Any, image_token_id: int, vocab_size: int) -> Any:
    """The embedded VLM around ``language_model`` (a Llama-architecture ``*ForCausalLM``, pretrained or a control's
    random one): ``LlavaForConditionalGeneration`` with its weights copied in, the vocabulary grown to
    ``vocab_size`` (new rows the mean of the others), and the :data:`EMBEDDED_VISION` tower and projector drawn
    from :data:`EMBEDDED_VISION_SEED` (the global generator is left as it was)."""
    grow_embeddings(language_model, vocab_size, [image_token_id])
    text_config = language_model.config
    config = LlavaConfig(vision_config=SiglipVisionConfig(**EMBEDDED_VISION), text_config=text_config,
                         image_token_id=image_token_id, vision_feature_layer=-1,
                         vision_feature_select_strategy="full", projector_hidden_act="gelu",
                         tie_word_embeddings=text_config.tie_word_embeddings)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(EMBEDDED_VISION_SEED)
        model = LlavaForConditionalGeneration(config).to(language_model.dtype)
    model.model.language_model.load_state_dict(language_model.model.state_dict())
    model.lm_head.load_state_dict(language_model.lm_head.state_dict())
    if text_config.tie_word_embeddings:
        model.tie_weights()
    return model.eval()


def build_embedded_processor(tokenizer: Any) -> Any:
    """The embedded VLM's processor: ``LlavaProcessor`` with SigLIP's PIL image processor at the tower's size and
    :func:`chatml_vision_template`; ``tokenizer`` must hold :data:`IMAGE_TOKEN`."""
    size = EMBEDDED_VISION["image_size"]
    tokenizer.chat_template = chatml_vision_template(IMAGE_TOKEN)
    return LlavaProcessor(image_processor=SiglipImageProcessorPil(size={"height": size, "width": size}),
                          tokenizer=tokenizer, patch_size=EMBEDDED_VISION["patch_size"],
                          vision_feature_select_strategy="full", chat_template=tokenizer.chat_template,
                          image_token=IMAGE_TOKEN, num_additional_image_tokens=0)


def check_processor(processor: Any, name: str) -> None:
    """Refuse a processor that cannot render the image conversations: no chat template, or no tokenizer."""
    if getattr(processor, "tokenizer", None) is None or getattr(processor, "image_processor", None) is None:
        raise ValueError(f"the processor of {name!r} ({type(processor).__name__}) has no tokenizer or no image "
                         "processor; a VLM backbone needs a multimodal processor (AutoProcessor.from_pretrained of "
                         "a VLM checkpoint)")
    if not getattr(processor, "chat_template", None):
        raise ValueError(f"the processor of {name!r} ({type(processor).__name__}) has no chat template, so the "
                         "image conversations cannot be rendered (processor.apply_chat_template); use an instruct "
                         "VLM checkpoint, or set processor.chat_template (st_instruct.models.vlm."
                         "chatml_vision_template(image_text) fits ChatML tokenizers)")


def check_image_size(model: Any, size: int, name: str) -> None:
    """Refuse an image side the VLM's vision tower cannot take: a fixed-size tower (SigLIP / CLIP inside LLaVA,
    Idefics3) takes its ``image_size`` only; Qwen2-VL takes multiples of ``patch_size * spatial_merge_size``."""
    expected = image_size_of(model)
    if expected is not None and size != expected:
        raise ValueError(f"image_size is {size}, but the vision tower of {name!r} takes {expected} x {expected} "
                         f"images; set image_size: {expected} in the recipe")
    vision = unwrap(model).config.vision_config
    step = int(getattr(vision, "patch_size", 1)) * int(getattr(vision, "spatial_merge_size", 1))
    if expected is None and size % step:
        raise ValueError(f"image_size is {size}, but the vision tower of {name!r} takes sides in multiples of "
                         f"{step} (patch_size x spatial_merge_size); use e.g. {max(step, size // step * step)}")


def qwen2_vl_processor(image_processor: Any, tokenizer: Any, chat_template: str | None = None) -> Any:
    """A Qwen2-VL / Qwen2.5-VL processor for images and text only. transformers' ``Qwen2VLProcessor`` insists on a
    video processor, and every video processor needs torchvision, which must not be installed here (docs/design.md §8);
    this subclass drops the video modality and keeps the rest (the image-token expansion and ``image_grid_thw``)."""
    class Qwen2VLImageTextProcessor(Qwen2VLProcessor):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
            self.video_token = "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    return Qwen2VLImageTextProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                     chat_template=chat_template or getattr(tokenizer, "chat_template", None))
