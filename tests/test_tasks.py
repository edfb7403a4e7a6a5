"""Long-context tasks: generators (deterministic, token-exact depth), scorers (hand-computed
values), benchmark loaders (local files, clear errors), and a tiny-model ``tasks`` run."""

from __future__ import annotations

import importlib.util
import json
import re

import pytest
from transformers import AutoTokenizer

from policy_table import rows
from streaming_llm import make_cache
from streaming_llm.cli import main
from streaming_llm.data import load_text
from streaming_llm.policies import is_bounded
from streaming_llm.tasks import scoring
from streaming_llm.tasks.longbench import (
    encode_example,
    load_longbench,
    load_zeroscrolls,
    longbench_example,
    truncate_middle,
    zeroscrolls_example,
)
from streaming_llm.tasks.prompting import PromptFormat, PromptParts
from streaming_llm.tasks.runner import DecodeConfig, greedy_generate
from streaming_llm.tasks.synthetic import TASK_NAMES, SyntheticTaskConfig, build_sample, needle_start_for_depth

SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def chat_tokenizer(tiny_model_dir):
    """The tiny tokenizer with a SmolLM2-style chat template and its special tokens."""
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = SMOLLM2_TEMPLATE
    return tok


@pytest.fixture(scope="module")
def haystack(tokenizer):
    return tokenizer(load_text("builtin:pioneer-days")[:60000], add_special_tokens=False)["input_ids"]


# -- generators -------------------------------------------------------------------------------------

@pytest.mark.parametrize("task", TASK_NAMES)
@pytest.mark.parametrize("depth", [0.0, 0.37, 1.0])
@pytest.mark.parametrize("tok_name", ["tokenizer", "chat_tokenizer"])
def test_needle_sits_at_the_requested_depth_token_exact(request, haystack, task, depth, tok_name):
    tok = request.getfixturevalue(tok_name)
    sample = build_sample(SyntheticTaskConfig(task=task), tok, haystack, length=900, depth=depth, sample=3, seed=7)
    ids, prompt = sample.prompt_ids, sample.prompt
    assert len(ids) == 900
    needle = list(sample.needle.ids)
    placed = sum(len(s.ids) for s in sample.snippets) if task == "vartrack" else len(needle)
    assert sample.depth_tokens == placed
    expected = needle_start_for_depth(depth, prompt.context_length, placed)
    assert sample.needle_start == expected
    assert ids[sample.needle_prompt_start : sample.needle_prompt_start + len(needle)] == needle
    assert sample.needle_prompt_start == prompt.context_start + expected
    # The ids are what the needle text tokenises to, and decode back to it.
    assert needle == tok(sample.needle.text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids[sample.needle_prompt_start :][: len(needle)]) == sample.needle.text
    # Every snippet is in the context, none overlaps another, and the rest is the haystack in order.
    spans = sorted((s.start, s.end) for s in sample.snippets)
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:]))
    assert spans[-1][1] <= prompt.context_length
    context = ids[prompt.context_start : prompt.context_end]
    filler = [t for i, t in enumerate(context) if not any(a <= i < b for a, b in spans)]
    offset = sample.haystack_offset
    assert filler == haystack[offset : offset + len(filler)]
    for answer in sample.answers:
        assert answer in "".join(s.text for s in sample.snippets)
    # The asked word, where the task has one: in the question and in the asked needle only.
    if task in ("needle", "multikey"):
        assert f" {sample.key} " in sample.parts.question and f" {sample.key} " in sample.needle.text
        assert all(f" {sample.key} " not in s.text for s in sample.snippets[1:])
    else:
        assert sample.key is None


def test_generators_are_deterministic_under_a_seed(tokenizer, haystack):
    config = SyntheticTaskConfig(task="multikey")
    first = build_sample(config, tokenizer, haystack, length=900, depth=0.5, sample=2, seed=11)
    again = build_sample(config, tokenizer, haystack, length=900, depth=0.5, sample=2, seed=11)
    other_seed = build_sample(config, tokenizer, haystack, length=900, depth=0.5, sample=2, seed=12)
    assert first == again
    assert first.prompt_ids != other_seed.prompt_ids and first.answers != other_seed.answers
    # The same sample asks the same thing over the same text at every length and depth.
    deeper = build_sample(config, tokenizer, haystack, length=800, depth=0.9, sample=2, seed=11)
    assert deeper.answers == first.answers and deeper.haystack_offset != 0
    assert deeper.parts == first.parts


def test_vartrack_chain_comes_in_order_after_the_depth(tokenizer, haystack):
    sample = build_sample(SyntheticTaskConfig(task="vartrack", num_hops=3), tokenizer, haystack,
                          length=800, depth=0.2, sample=0)
    starts = [s.start for s in sample.snippets]
    assert starts == sorted(starts) and len(starts) == 4
    first_name, value = sample.answers[0], re.search(r"value (\d+)", sample.parts.question).group(1)
    assert sample.snippets[0].text == f"\nVAR {first_name} = {value}.\n"
    assert sample.parts.answer_prefix.endswith("they are: VAR")
    assert [s.text for s in sample.snippets[1:]] == [
        f"\nVAR {b} = VAR {a}.\n" for a, b in zip(sample.answers, sample.answers[1:])]


@pytest.mark.parametrize("kwargs,message", [
    ({"task": "nope"}, "task must be one of passkey, needle, multikey, vartrack"),
    ({"num_keys": 1}, "num_keys must be an integer in [2, 50]"),
    ({"num_hops": 0}, "num_hops must be an integer in [1, 64]"),
    ({"value_digits": 13}, "value_digits must be an integer in [2, 12]"),
])
def test_task_config_validates(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        SyntheticTaskConfig(**kwargs)


@pytest.mark.parametrize("kwargs,message", [
    ({"length": 20, "depth": 0.5}, "length 20 is too short for task 'passkey'"),
    ({"length": 500, "depth": 1.5}, r"depth must be a number in \[0, 1\]"),
    ({"length": 0, "depth": 0.5}, "length must be an integer >= 1"),
])
def test_bad_sample_parameters_raise(tokenizer, haystack, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_sample(SyntheticTaskConfig(), tokenizer, haystack, **kwargs)


def test_chat_prompt_puts_question_after_context_and_opens_the_answer(chat_tokenizer):
    fmt = PromptFormat(chat_tokenizer)
    context = chat_tokenizer("some book text", add_special_tokens=False)["input_ids"]
    prompt = fmt.build(PromptParts("Find it.", "What is it?", "It is"), context)
    text = chat_tokenizer.decode(prompt.ids)
    assert text.startswith("<|im_start|>system")
    assert text.endswith("What is it?<|im_end|>\n<|im_start|>assistant\nIt is")
    assert prompt.ids[prompt.context_start : prompt.context_end] == context
    assert fmt.frame_length(PromptParts("Find it.", "What is it?", "It is")) == len(prompt.ids) - len(context)


# -- scorers ---------------------------------------------------------------------------------------

def test_synthetic_scorers():
    assert scoring.contains_score(" 27611. Remember it.", ["27611"]) == 1.0
    assert scoring.contains_score(" 276112", ["27611"]) == 0.0  # a whole number, not a prefix
    assert scoring.contains_score("a piece of information", ["27611"]) == 0.0
    assert scoring.recall_score(" ABCDE, FGHIJ and KLMNO", ["ABCDE", "FGHIJ", "KLMNO", "PQRST"]) == 0.75
    assert scoring.recall_score(" abcdex", ["ABCDE"]) == 0.0


def test_longbench_metrics_match_hand_computed_values():
    # normalised: "cat sat on mat" vs "cat sat": 2 common, P = 2/4, R = 2/2, F1 = 2/3
    assert scoring.qa_f1_score("The cat sat on the mat.", "a cat sat") == pytest.approx(2 / 3)
    assert scoring.qa_f1_score("dog", "cat") == 0.0
    # LCS("the cat sat", "the cat was here") = 2 words: P = 2/3, R = 2/4, F = 4/7
    assert scoring.rouge_l_score("the cat sat", "the cat was here") == pytest.approx(4 / 7)
    assert scoring.retrieval_score("Paragraph 3, or maybe 4", "Paragraph 3") == 0.5
    assert scoring.count_score("there are 12 unique paragraphs", "12") == 1.0
    assert scoring.classification_score("Type: Location", "Location", all_classes=["Location", "Person"]) == 1.0
    # two classes named -> 1/2 credit
    assert scoring.classification_score("Person or Location", "Location", all_classes=["Location", "Person"]) == 0.5
    # trec/triviaqa/samsum score the first line only; the best of several answers counts
    assert scoring.longbench_score("triviaqa", "\nParis\nLondon", ["London", "Paris"]) == 1.0
    assert scoring.longbench_score("triviaqa", "\nParis\nLondon", ["London"]) == 0.0
    assert scoring.code_sim_score("# comment\nx = 1", "x = 1") == 1.0
    with pytest.raises(ValueError, match="LongBench task must be one of"):
        scoring.longbench_score("dureader", "x", ["y"])


def test_zeroscrolls_metrics_match_hand_computed_values():
    assert scoring.zs_accuracy_score("The answer is (B)", "B") == 1.0
    assert scoring.zs_accuracy_score("A", "(B) the second") == 0.0
    assert scoring.zs_exp_similarity_score("about 40%", "60%") == pytest.approx(0.25)
    assert scoring.zs_exp_similarity_score("no idea", "60%") == 0.0
    # orders 1 2 3 vs 1 3 2: 2 of 3 pairs concordant
    assert scoring.zs_concordance_score("1, 3, 2", "1, 2, 3") == pytest.approx(2 / 3)
    assert scoring.zs_concordance_score("1, 2", "1, 2, 3") == 0.0
    assert scoring.zs_f1_score("Café au lait", "cafe") == pytest.approx(0.5)
    # identical texts: every ROUGE is 1, so is their geometric mean
    assert scoring.zs_rouge_score("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(1.0)
    assert scoring.zeroscrolls_score("quality", "C", ["C"]) == 1.0


# -- benchmark loaders -------------------------------------------------------------------------------

def test_longbench_and_zeroscrolls_load_local_jsonl(tmp_path, chat_tokenizer):
    row = {"input": "Who?", "context": "Alice met Bob.", "answers": ["Alice"], "all_classes": None, "_id": "x1"}
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "hotpotqa.jsonl").write_text(json.dumps(row) + "\n")
    [example] = load_longbench("hotpotqa", source=str(tmp_path))
    assert example.answers == ("Alice",) and "Alice met Bob." in example.prompt
    assert example.prompt.endswith("Question: Who?\nAnswer:")
    assert example.score("alice") == 1.0 and example.max_new_tokens == 32
    (tmp_path / "quality").mkdir()
    (tmp_path / "quality" / "validation.jsonl").write_text(json.dumps({"id": "q", "input": "Pick.", "output": "B"}) + "\n")
    [zs] = load_zeroscrolls("quality", source=str(tmp_path))
    assert zs.score("(B)") == 1.0
    ids = encode_example(chat_tokenizer, example, max_length=1000)
    assert chat_tokenizer.decode(ids).endswith("Answer:<|im_end|>\n<|im_start|>assistant\n")
    cut = encode_example(chat_tokenizer, example, max_length=len(ids) - 10)
    assert len(cut) == len(ids) - 10 and cut[-5:] == ids[-5:] and cut[:5] == ids[:5]


def test_benchmark_rows_and_truncation():
    assert zeroscrolls_example("qasper", {"id": "1", "input": "p", "output": None}).answers == ()
    assert longbench_example("trec", {"input": "q", "context": "c", "answers": ["a"], "all_classes": ["a", "b"]}).all_classes == ("a", "b")
    assert truncate_middle(list(range(10)), 4) == [0, 1, 8, 9]
    assert truncate_middle([1, 2], 4) == [1, 2]
    with pytest.raises(ValueError, match="LongBench task must be one of"):
        load_longbench("vcsum")


def test_malformed_local_rows_name_the_file_line_and_fields(tmp_path):
    (tmp_path / "trec.jsonl").write_text('{"input": "q", "context": "c", "answers": ["a"]}\n\n{"input": oops}\n')
    with pytest.raises(ValueError, match=r"trec\.jsonl:3: not valid JSON"):
        load_longbench("trec", source=str(tmp_path))
    (tmp_path / "trec.jsonl").write_text('["a list"]\n')
    with pytest.raises(ValueError, match=r"trec\.jsonl:1: expected a JSON object"):
        load_longbench("trec", source=str(tmp_path))
    (tmp_path / "trec.jsonl").write_text(json.dumps({"_id": "x7", "input": "q", "context": "c"}) + "\n")
    with pytest.raises(ValueError, match=r"row 'x7' lacks answers; each row needs the fields input, context, answers"):
        load_longbench("trec", source=str(tmp_path))


@pytest.mark.skipif(importlib.util.find_spec("datasets") is not None, reason="datasets is installed")
def test_hub_loading_without_datasets_names_the_extra():
    with pytest.raises(ImportError, match=r"streaming_llm\[datasets\]"):
        load_longbench("hotpotqa")


# -- runner and CLI --------------------------------------------------------------------------------

def test_chunked_prefill_matches_one_shot_and_bounded_cache_stays_bounded(tiny_llama):
    prompt = list(range(3, 203))
    one_shot = greedy_generate(tiny_llama, make_cache(tiny_llama, "full"), prompt, DecodeConfig(1000, 6))
    chunked = greedy_generate(tiny_llama, make_cache(tiny_llama, "full"), prompt, DecodeConfig(32, 6))
    assert chunked.tokens == one_shot.tokens and len(chunked.tokens) == 6
    bounded = greedy_generate(tiny_llama, make_cache(tiny_llama, "streaming", start_size=4, recent_size=28),
                              prompt, DecodeConfig(16, 6))
    assert bounded.cache_tokens_max == 32
    with pytest.raises(ValueError, match="chunk_size must be an integer >= 1"):
        DecodeConfig(chunk_size=0)


@pytest.mark.parametrize("policy,params", rows(is_bounded))
def test_greedy_generate_keeps_every_policy_within_its_budget(tiny_llama, policy, params):
    prompt = [3 + i % 250 for i in range(300)]
    with make_cache(tiny_llama, policy, **params) as cache:
        out = greedy_generate(tiny_llama, cache, prompt, DecodeConfig(chunk_size=64, max_new_tokens=4))
        assert len(out.tokens) == 4 and 0 < out.cache_tokens_max <= cache.max_slots() < len(prompt)


def test_tasks_command_writes_records_table_and_heatmaps(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "tasks"
    argv = ["tasks", "--model", str(tiny_model_dir), "--policies", "full", "streaming:start_size=4,recent_size=60",
            "--tasks", "passkey", "--lengths", "300", "400", "--depths", "0", "1", "--samples", "1",
            "--chunk-size", "64", "--max-new-tokens", "4", "--output-dir", str(out), "--quiet"]
    assert main(argv) == 0
    records = sorted((out / "records").glob("*.json"))
    assert len(records) == 2 * 2 * 2
    record = json.loads(records[0].read_text())
    assert {"label", "task", "length", "depth", "sample", "score", "prediction", "answers", "params"} <= record.keys()
    streaming = [json.loads(p.read_text()) for p in records if "streaming" in p.name]
    assert all(r["cache_tokens_max"] <= 64 + 64 for r in streaming)  # budget + one prefill chunk
    markdown = (out / "results.md").read_text()
    assert "| full | passkey | 300 | 0 |" in markdown and "| length | 0% | 100% | mean |" in markdown
    assert "Command: `streaming-llm tasks --model" in markdown and "## passkey: `streaming:start_size=4,recent_size=60`" in markdown
    assert (out / "results.csv").read_text().startswith("policy,task,length,depth,accuracy,samples")
    heatmaps = sorted(p.name for p in out.glob("heatmap-*.png"))
    assert heatmaps == ["heatmap-full-passkey.png", "heatmap-streaming_start_size=4_recent_size=60-passkey.png"]
    assert (out / heatmaps[0]).read_bytes()[:4] == b"\x89PNG"
    # A rerun reuses every record.
    mtimes = [p.stat().st_mtime_ns for p in records]
    assert main(argv) == 0
    assert [p.stat().st_mtime_ns for p in records] == mtimes


@pytest.mark.parametrize("args,message", [
    (["--depths", "1.5"], r"--depths must be numbers in \[0, 1\]"),
    (["--policies", "nope"], "policy must be one of"),
    (["--samples", "0"], "--samples must be an integer >= 1"),
])
def test_tasks_command_rejects_bad_input(tiny_model_dir, tmp_path, capsys, args, message):
    assert main(["tasks", "--model", str(tiny_model_dir), "--output-dir", str(tmp_path), "--quiet", *args]) == 2
    assert message.replace("\\", "") in capsys.readouterr().err
