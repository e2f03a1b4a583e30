"""Tests for spct_jax.grm.templates: prompt layout, hints, demonstrations, chat wrapping, registry."""

import dataclasses

import pytest

from spct_jax.grm import parsing
from spct_jax.grm import templates

CONV = [("user", "Hi"), ("assistant", "Hello!"), ("user", "Name three primes.")]


def test_format_conversation_renders_roles_in_order():
  assert templates.format_conversation(CONV) == "User: Hi\nAssistant: Hello!\nUser: Name three primes."
  assert templates.format_conversation("Just a query") == "User: Just a query"
  as_dicts = [{"role": r, "content": c} for r, c in CONV]
  assert templates.format_conversation(as_dicts) == templates.format_conversation(CONV)


@pytest.mark.parametrize("conv, match", [
    ([], "empty"),
    ([("system", "x"), ("user", "q")], "unknown role"),
    ([("user", "q"), ("assistant", "a")], "last turn"),
])
def test_format_conversation_rejects_bad_input(conv, match):
  with pytest.raises(ValueError, match=match):
    templates.format_conversation(conv)


def test_default_prompt_has_paper_sections_and_numbered_blocks_in_order():
  responses = ["2, 3, 5", "1, 4, 9", "7, 11, 13"]
  prompt = templates.build_prompt(CONV, responses)
  assert prompt.startswith("You are a skilled little expert at scoring responses.")
  headers = ["#### Evaluation Criteria ####", "1. Instruction Adherence:", "2. Usefulness:", "3. Level of Detail:",
             "4. Relevance:", "#### Conversation Context ####", "User: Name three primes.",
             "#### Responses to be Scored ####", "#### Output Format Requirements ####", "Specific Criteria:",
             "Analysis:", "Scores:"]
  positions = [prompt.index(h) for h in headers]
  assert positions == sorted(positions)
  for band in ("(9-10 points)", "(6-8 points)", "(3-5 points)", "(1-2 points)"):
    assert prompt.count(band) == 4  # one per criterion
  # Each response sits in its own numbered block, in order, between the responses header and the output header.
  blocks = "".join(f"[The Begin of Response {i}]\n{r}\n[The End of Response {i}]\n"
                   for i, r in enumerate(responses, 1))
  start = prompt.index("#### Responses to be Scored ####\n") + len("#### Responses to be Scored ####\n")
  assert prompt[start:start + len(blocks)] == blocks
  assert "\\boxed{x, x}" in prompt
  assert "[The Begin of Response]" not in prompt
  assert prompt.endswith(">.\n")


def test_single_response_uses_unnumbered_block_and_single_score_line():
  prompt = templates.build_prompt(CONV, ["2, 3, 5"])
  assert "[The Begin of Response]\n2, 3, 5\n[The End of Response]\n" in prompt
  assert "[The Begin of Response 1]" not in prompt
  assert "\\boxed{x}" in prompt and "\\boxed{x, x}" not in prompt


def test_single_binary_template():
  prompt = templates.build_prompt(CONV, ["2, 3, 5"], template="single_binary")
  assert "The score is 0 or 1, with 1 indicating that the response is correct." in prompt
  for name in ("1. Instruction Adherence:", "2. Clarity:", "3. Accuracy:"):
    assert name in prompt
  assert "Usefulness" not in prompt and "(9-10 points)" not in prompt
  assert templates.get_template("single_binary").score_range == (0, 1)
  with pytest.raises(ValueError, match="at most 1"):
    templates.build_prompt(CONV, ["a", "b"], template="single_binary")


def test_hint_suffix_only_when_asked_and_one_based():
  plain = templates.build_prompt(CONV, ["a", "b", "c"])
  assert "The best response is" not in plain
  hinted = templates.build_prompt(CONV, ["a", "b", "c"], hint_best=2)
  assert hinted == plain + "The best response is: Response 3\n"
  with pytest.raises(ValueError, match="outside"):
    templates.build_prompt(CONV, ["a", "b"], hint_best=2)
  with pytest.raises(ValueError, match="at least 2"):
    templates.build_prompt(CONV, ["a"], hint_best=0)


def test_demonstrations_precede_task_and_prefix_ends_prompt():
  demo = templates.render_demonstration([("user", "1+1?")], ["2", "3"], "Correctness 100%.", "Response 1 is right.",
                                        [9, 2])
  assert demo.endswith("Specific Criteria: Correctness 100%.\nAnalysis: Response 1 is right.\nScores: \\boxed{9, 2}\n")
  # The demo's prompt part is exactly the template's prompt for that item.
  assert demo.startswith(templates.build_prompt([("user", "1+1?")], ["2", "3"]))
  assert parsing.parse_scores(demo, 2).scores == (9, 2)

  task = templates.build_prompt(CONV, ["a", "b"])
  full = templates.build_prompt(CONV, ["a", "b"], demonstrations=[demo, demo], output_prefix="Specific Criteria:")
  assert full == demo + "\n" + demo + "\n" + task + "Specific Criteria:"


def test_render_demonstration_validates_scores():
  with pytest.raises(ValueError, match="expected 2 scores"):
    templates.render_demonstration("q", ["a", "b"], "p", "c", [3])
  with pytest.raises(ValueError, match="outside"):
    templates.render_demonstration("q", ["a"], "p", "c", [2], template="single_binary")


def test_wrap_chat_styles():
  assert templates.wrap_chat("P", "raw") == "P"
  assert templates.wrap_chat("P", "gemma") == "<start_of_turn>user\nP<end_of_turn>\n<start_of_turn>model\n"
  with pytest.raises(ValueError, match="valid styles"):
    templates.wrap_chat("P", "llama")
  # The output prefix opens the model turn, after the chat wrapping.
  wrapped = templates.build_prompt(CONV, ["a", "b"], chat_style="gemma", output_prefix="Specific Criteria:")
  assert wrapped.endswith("<end_of_turn>\n<start_of_turn>model\nSpecific Criteria:")


def test_unknown_template_lists_valid_names():
  with pytest.raises(ValueError, match=r"'nope'.*\['default', 'single_binary'\]"):
    templates.get_template("nope")
  custom = dataclasses.replace(templates.TEMPLATES["default"], name="custom", hint_suffix="Best: #{j}")
  assert templates.build_prompt(CONV, ["a", "b"], template=custom, hint_best=0).endswith("Best: #1\n")


def test_meta_rm_input_layout():
  text = templates.meta_rm_input(CONV, ["a", "b"], "Specific Criteria: x\nAnalysis: y\nScores: \\boxed{3, 4}")
  assert text.startswith("Please score the responses.\n\n#### Conversation Context ####\nUser: Hi\n")
  assert "[The Begin of Response 2]\nb\n[The End of Response 2]\n\nSpecific Criteria: x" in text
  assert "Evaluation Criteria" not in text
  gemma = templates.meta_rm_input(CONV, ["a", "b"], "T", chat_style="gemma")
  assert gemma.endswith("<start_of_turn>model\nT<end_of_turn>")


def test_template_for_follows_the_item():
  assert templates.template_for(2) == "default"
  assert templates.template_for(5, None) == "default"
  assert templates.template_for(1) == "single_binary"  # unlabelled single response: the 0/1 prompt
  assert templates.template_for(1, 1.0) == templates.template_for(1, 0) == "single_binary"
  assert templates.template_for(1, 7, single=None) == "default"  # n = 1 on the 1..10 scale, by choice
  assert templates.template_for(3, default="default", single=None) == "default"
  # A 0/1 label judged on the 1..10 scale (or a 1..10 label on 0/1) is refused, not silently inverted.
  with pytest.raises(ValueError, match=r"label 0 is not an integer in template 'default'.*\[1, 10\]"):
    templates.template_for(1, 0, single=None)
  with pytest.raises(ValueError, match=r"label 7 .*'single_binary'"):
    templates.template_for(1, 7)
  with pytest.raises(ValueError, match="label 0.5"):
    templates.template_for(1, 0.5)
  with pytest.raises(ValueError, match="unknown GRM template"):
    templates.template_for(2, default="nope")
  with pytest.raises(ValueError, match="at least 1 response"):
    templates.template_for(0)
