"""The greedy decoder against transformers' own generate(): same tokens, finished rows dropped."""

from __future__ import annotations

import copy

import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerBase

from workers.ml.chat import single_turn
from workers.ml.device import Placement
from workers.ml.generation import generate_tokens, greedy_decode

PROMPTS = [
    "Hi",
    "Write a haiku about the sea and the salt in the wind",
    "What is 2 + 2?",
    "Name three rivers of Europe, please, with their lengths",
]


def _reference(
    model: LlamaForCausalLM, batch: dict[str, torch.Tensor], new: int, stop: list[int]
) -> list[list[int]]:
    output = model.generate(
        **batch,
        max_new_tokens=new,
        do_sample=False,
        num_beams=1,
        eos_token_id=stop,
        pad_token_id=0,
    )
    rows = output[:, batch["input_ids"].shape[1] :].tolist()
    # generate() pads a finished row to the batch's end: cut each row after its first stop token.
    cut = []
    for row in rows:
        ends = [i for i, token in enumerate(row) if token in stop]
        cut.append(row[: ends[0] + 1] if ends else row)
    return cut


def test_greedy_decode_matches_generate_with_rows_finishing_early(
    tiny_model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerBase
) -> None:
    tokenizer.padding_side = "left"
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.inference_mode():
        free = greedy_decode(
            tiny_model, batch["input_ids"], batch["attention_mask"], max_new_tokens=12,
            stop_ids=[],
        )  # fmt: skip
        # Stop tokens that end two rows at different steps and leave the others running.
        stop = [free[0][2], free[2][5]]
        ours = greedy_decode(
            tiny_model, batch["input_ids"], batch["attention_mask"], max_new_tokens=12,
            stop_ids=stop,
        )  # fmt: skip
        reference = _reference(tiny_model, dict(batch), 12, stop)
    assert [len(row) for row in free] == [12] * len(PROMPTS)
    assert ours == reference
    assert len(ours[0]) <= 3 and len(ours[2]) <= 6
    assert any(len(row) == 12 for row in ours)  # some rows ran to the limit after others left


def test_greedy_decode_with_every_row_stopping_at_once(
    tiny_model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerBase
) -> None:
    batch = tokenizer(PROMPTS[:2], return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.inference_mode():
        first = greedy_decode(
            tiny_model, batch["input_ids"], batch["attention_mask"], max_new_tokens=1, stop_ids=[]
        )
        stop = [first[0][0], first[1][0]]
        ours = greedy_decode(
            tiny_model, batch["input_ids"], batch["attention_mask"], max_new_tokens=8,
            stop_ids=stop,
        )  # fmt: skip
    assert ours == first


def test_bf16_decoding_runs_on_bf16_weights_and_gives_the_fp32_ones_back(
    tiny_model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerBase
) -> None:
    before = {name: (p.data_ptr(), p.detach().clone()) for name, p in tiny_model.named_parameters()}
    bf16 = Placement(torch.device("cpu"), torch.bfloat16)
    conversations = [single_turn(prompt) for prompt in PROMPTS]
    ours = generate_tokens(
        tiny_model, tokenizer, conversations, max_new_tokens=6, placement=bf16, batch_size=2
    )
    for name, parameter in tiny_model.named_parameters():
        pointer, value = before[name]
        assert parameter.dtype == torch.float32 and parameter.data_ptr() == pointer
        assert torch.equal(parameter, value)
    reference_model = copy.deepcopy(tiny_model).to(torch.bfloat16)
    reference = generate_tokens(
        reference_model, tokenizer, conversations, max_new_tokens=6, placement=bf16
    )
    assert ours == reference
