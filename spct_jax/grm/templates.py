"""GRM prompts as data: the paper's appendix G templates, swappable by name.

Wording. The `default` and `single_binary` texts follow the prompt templates printed in appendix G of
"Inference-Time Scaling for Generalist Reward Modeling" (arXiv 2504.02495), taken from a transcription of the
paper. The paper writes its line breaks as literal `\\n`; we turn them into real newlines and separate the
`####` sections by one blank line (the printed layout does not pin blank lines down). Deliberate deviations:
typographic quotes become ASCII quotes, the typo "responeses" is fixed, and both templates carry the line
"Output with three lines" (the transcription of the single-response template drops it, the default keeps it).

n == 1 under `default`: the response is shown in the unnumbered block of the paper's single-response
template, `[The Begin of Response]`, and the output line asks for `\\boxed{x}`; the 1..10 criteria stay.

Which template judges an item (`template_for`): single-response items (n = 1, a 0/1 correctness label) go to the
single-response template (`single_binary`, scores 0/1, correct iff S_1 == label); every other item to the default
one. The choice, the score range the output is parsed with and the demonstrations shown all follow the item, so
one batch can mix n = 1 and n >= 2 items.

Meta RM: appendix G gives a plainer prompt ("Please score the responses." + context + responses) whose
*answer* is the GRM's principles and critique. How that answer is joined to the prompt is our choice (see
`meta_rm_input`).

Conversations render one turn per line as `User: ...` / `Assistant: ...` (our choice; the paper only says
"{conversation context & query}"); the last turn must be the user's query.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence, Union

_CONTEXT_HEADER = "#### Conversation Context ####"
_RESPONSES_HEADER = "#### Responses to be Scored ####"
_OUTPUT_HEADER = "#### Output Format Requirements ####"
_ROLE_NAMES = {"user": "User", "assistant": "Assistant"}
# Blank line between few-shot demonstrations (each already ends with a newline).
DEMO_SEPARATOR = "\n"
CHAT_STYLES = ("raw", "gemma")


@dataclasses.dataclass(frozen=True)
class GRMTemplate:
  """A pointwise GRM prompt.

  Attributes:
    name: registry key.
    preamble: opening instructions and the evaluation criteria (everything before the context).
    block_format: one response when n >= 2; fields `{i}` (1-based position) and `{response}`.
    single_block_format: the response when n == 1; field `{response}`.
    output_format: the output requirements when n >= 2.
    single_output_format: the output requirements when n == 1.
    score_range: inclusive (low, high) of a valid score.
    hint_suffix: appended for hinted sampling; field `{j}` (1-based best response).
    max_responses: largest n the template is written for (None: any).
  """

  name: str
  preamble: str
  block_format: str
  single_block_format: str
  output_format: str
  single_output_format: str
  score_range: tuple[int, int] = (1, 10)
  hint_suffix: str = "The best response is: Response {j}"
  max_responses: int | None = None


_OPENING = (
    "You are a skilled little expert at scoring responses. You should evaluate given responses based on the given "
    "judging criteria.\n"
    "Given the context of the conversation (the last round is the User's query) and multiple responses from the "
    "Assistant, you need to refer to the [General Evaluation Criteria] to score the responses. Based on the general "
    "evaluation criteria, state potential other specific criteria to the query, the weights of different criteria, "
    "and then provide an overall comprehensive score upon them.")

_DEFAULT_PREAMBLE = _OPENING + (
    "\nEach score is an integer between 1 and 10, with a higher score indicating that the response meets the "
    "relevant criteria more closely. For example, a score of 1 means the response does not meet the criteria at "
    "all, a score of 6 means the response meets only some parts, and a score of 10 means the response perfectly "
    "meets the evaluation criteria.\n"
    "Before scoring, please analyze step by step. Your scoring needs to be as strict as possible.\n\n"
    "#### Evaluation Criteria ####\n"
    "1. Instruction Adherence:\n"
    " - Fully Adhered (9-10 points): The response fully complies with all instructions and requirements of the "
    "question.\n"
    " - Partially Adhered (6-8 points): The response meets most of the instructions but has some omissions or "
    "misunderstandings.\n"
    " - Basically Adhered (3-5 points): The response meets some instructions, but the main requirements are not "
    "fulfilled.\n"
    " - Not Adhered (1-2 points): The response does not meet any instructions.\n"
    " Example: If the question requires three examples and the response provides only one, it falls under "
    "\"Partially Adhered.\"\n"
    "2. Usefulness:\n"
    " - Highly Useful (9-10 points): The response provides comprehensive and accurate information, fully "
    "addressing the issue.\n"
    " - Useful but Incomplete (6-8 points): The response provides some useful information, but lacks details or "
    "accuracy.\n"
    " - Limited Usefulness (3-5 points): The response offers little useful information, with most content being "
    "irrelevant or incorrect.\n"
    " - Useless or Incorrect (1-2 points): The response is completely irrelevant or incorrect.\n"
    " Example: If there are factual errors in the response but the overall direction is correct, it falls under "
    "\"Useful but Incomplete.\"\n"
    "3. Level of Detail:\n"
    " - Very Detailed (9-10 points): The response includes ample details covering all aspects of the issue.\n"
    " - Detailed but Slightly Lacking (6-8 points): The response is fairly detailed but misses some important "
    "details.\n"
    " - Basically Detailed (3-5 points): The response provides some details but is not thorough enough overall.\n"
    " - Not Detailed (1-2 points): The response is very brief and lacks necessary details.\n"
    " Example: If the response provides only a simple conclusion without an explanation, it falls under "
    "\"Not Detailed.\"\n"
    "4. Relevance:\n"
    " - Highly Relevant (9-10 points): The response is highly relevant to the question, with information closely "
    "aligned with the topic.\n"
    " - Generally Relevant (6-8 points): The response is generally relevant but includes some unnecessary "
    "information.\n"
    " - Partially Relevant (3-5 points): The response has a lot of content that deviates from the topic.\n"
    " - Not Relevant (1-2 points): The response is completely irrelevant.\n"
    " Example: If the response strays from the topic but still provides some relevant information, it falls "
    "under \"Partially Relevant.\"")

_BINARY_PREAMBLE = _OPENING + (
    " The score is 0 or 1, with 1 indicating that the response is correct.\n"
    "Before scoring, please analyze step by step. Your scoring needs to be as strict as possible.\n\n"
    "#### Evaluation Criteria ####\n"
    "1. Instruction Adherence:\n"
    " - Fully Adhered: The response fully complies with all instructions and requirements of the question.\n"
    " - Partially Adhered: The response meets most of the instructions but has some omissions or "
    "misunderstandings.\n"
    " - Basically Adhered: The response meets some instructions, but the main requirements are not fulfilled.\n"
    " - Not Adhered: The response does not meet any instructions.\n"
    " Example: If the question requires three examples and the response provides only one, it falls under "
    "\"Partially Adhered.\"\n"
    "2. Clarity:\n"
    " - Very Clear: The response is fluent, well-structured, and logically clear.\n"
    " - Clear but Minor Issues: The response is mostly clear but has some minor language or structural issues.\n"
    " - Basically Clear: The response has noticeable language or logic issues but is still understandable.\n"
    " - Not Clear: The response is disjointed, illogical, and hard to understand.\n"
    " Example: If the response has complex sentence structures and lacks punctuation, it falls under "
    "\"Basically Clear\" or \"Not Clear.\"\n"
    "3. Accuracy:\n"
    " - Completely Accurate: All information and data are completely accurate.\n"
    " - Mostly Accurate: Most information is accurate, with minor errors.\n"
    " - Some Errors: There are some noticeable errors affecting comprehension.\n"
    " - Mostly Incorrect: There are numerous errors seriously affecting the credibility of the information.\n"
    " Example: If a specific data point is incorrectly cited but doesn't affect the overall conclusion, it falls "
    "under \"Mostly Accurate.\"")

_CRITERIA_LINES = (
    "Output with three lines\n"
    "Specific Criteria: <Other potential criteria specific to the query and the context, and the weights of each "
    "criteria>.\n"
    "Analysis: <Compare different responses based on given Criteria>.\n")
_MULTI_SCORES_LINE = (
    "Scores: <the overall comprehensive score of all responses in order, separate by comma in the boxed, e.g., "
    "\\boxed{x, x} if there exists 2 responses>.")
_SINGLE_SCORES_LINE = "Scores: <the overall comprehensive score of the response, e.g., \\boxed{x}>."
_NUMBERED_BLOCK = "[The Begin of Response {i}]\n{response}\n[The End of Response {i}]\n"
_SINGLE_BLOCK = "[The Begin of Response]\n{response}\n[The End of Response]\n"

TEMPLATES: Mapping[str, GRMTemplate] = {
    "default": GRMTemplate(
        name="default",
        preamble=_DEFAULT_PREAMBLE,
        block_format=_NUMBERED_BLOCK,
        single_block_format=_SINGLE_BLOCK,
        output_format=_CRITERIA_LINES + _MULTI_SCORES_LINE,
        single_output_format=_CRITERIA_LINES + _SINGLE_SCORES_LINE,
        score_range=(1, 10)),
    "single_binary": GRMTemplate(
        name="single_binary",
        preamble=_BINARY_PREAMBLE,
        block_format=_SINGLE_BLOCK,
        single_block_format=_SINGLE_BLOCK,
        output_format=_CRITERIA_LINES + _SINGLE_SCORES_LINE,
        single_output_format=_CRITERIA_LINES + _SINGLE_SCORES_LINE,
        score_range=(0, 1),
        max_responses=1),
}

# Appendix G's plainer meta-RM prompt; the GRM trajectory is appended by `meta_rm_input`.
META_RM_TEMPLATE = (
    "Please score the responses.\n\n" + _CONTEXT_HEADER + "\n{conversation}\n\n" + _RESPONSES_HEADER +
    "\n{responses}")

Conversation = Union[str, Sequence[Union[tuple[str, str], Mapping[str, str]]]]


def get_template(template: Union[str, GRMTemplate]) -> GRMTemplate:
  """Returns the registered template `template` (a `GRMTemplate` passes through)."""
  if isinstance(template, GRMTemplate):
    return template
  if template not in TEMPLATES:
    raise ValueError(f"unknown GRM template {template!r}; valid names: {sorted(TEMPLATES)}")
  return TEMPLATES[template]


def template_for(num_responses: int,
                 label: float | None = None,
                 *,
                 default: str = "default",
                 single: str | None = "single_binary") -> str:
  """The template that judges an item with `num_responses` responses (a pure function of the item).

  Args:
    num_responses: n, the item's number of responses.
    label: for n = 1, the item's rating (its ground-truth score); None when unlabelled (plain scoring).
    default: the template of items with n >= 2.
    single: the template of n = 1 items; None: `default` judges them too (then a label must be on its scale).

  Returns:
    The template's registry name.

  Raises:
    ValueError: n < 1, an unknown name, or an n = 1 label that is not an integer in the chosen template's score
      range (a 0/1 label judged on a 1..10 scale would reward the opposite of the truth).
  """
  if num_responses < 1:
    raise ValueError(f"an item needs at least 1 response, got {num_responses}")
  name = single if num_responses == 1 and single is not None else default
  tpl = get_template(name)
  if num_responses == 1 and label is not None:
    lo, hi = tpl.score_range
    if label != int(label) or not lo <= label <= hi:
      raise ValueError(f"single-response label {label:g} is not an integer in template {name!r}'s score range "
                       f"[{lo}, {hi}]; choose the n = 1 template (GRMOptions.single_template) on the label's scale")
  return name


def format_conversation(conversation: Conversation) -> str:
  """Renders `(role, content)` turns as `User: ...` / `Assistant: ...` lines.

  Args:
    conversation: `(role, content)` pairs (or `{"role", "content"}` mappings), roles "user" or "assistant";
      the last turn is the user's query. A bare string is taken as a single user turn.

  Returns:
    The turns joined by newlines.

  Raises:
    ValueError: empty conversation, unknown role, or a last turn that is not the user's.
  """
  if isinstance(conversation, str):
    conversation = [("user", conversation)]
  if not conversation:
    raise ValueError("conversation is empty; it needs at least the user's query")
  # Mapping turns ({"role", "content"}, the chat-message convention) are accepted too.
  turns = [(t["role"], t["content"]) if isinstance(t, Mapping) else tuple(t) for t in conversation]
  lines = []
  for turn, (role, content) in enumerate(turns):
    if role not in _ROLE_NAMES:
      raise ValueError(f"turn {turn}: unknown role {role!r}; expected one of {sorted(_ROLE_NAMES)}")
    lines.append(f"{_ROLE_NAMES[role]}: {content}")
  if turns[-1][0] != "user":
    raise ValueError(f"the last turn must be the user's query, got role {turns[-1][0]!r}")
  return "\n".join(lines)


def _format_responses(responses: Sequence[str], tpl: GRMTemplate) -> str:
  if not responses:
    raise ValueError("no responses to score")
  if tpl.max_responses is not None and len(responses) > tpl.max_responses:
    raise ValueError(f"template {tpl.name!r} scores at most {tpl.max_responses} response(s), got {len(responses)}")
  if len(responses) == 1:
    return tpl.single_block_format.format(response=responses[0])
  return "".join(tpl.block_format.format(i=i + 1, response=r) for i, r in enumerate(responses))


def _task_body(conversation: Conversation, responses: Sequence[str], tpl: GRMTemplate) -> str:
  output = tpl.single_output_format if len(responses) == 1 else tpl.output_format
  return (f"{tpl.preamble}\n\n{_CONTEXT_HEADER}\n{format_conversation(conversation)}\n\n"
          f"{_RESPONSES_HEADER}\n{_format_responses(responses, tpl)}\n{_OUTPUT_HEADER}\n{output}\n")


def wrap_chat(prompt: str, style: str) -> str:
  """Encloses `prompt` in a chat template: "raw" (unchanged) or "gemma" (one user turn, model turn opened)."""
  if style == "raw":
    return prompt
  if style == "gemma":
    return f"<start_of_turn>user\n{prompt}<end_of_turn>\n<start_of_turn>model\n"
  raise ValueError(f"unknown chat style {style!r}; valid styles: {list(CHAT_STYLES)}")


def build_prompt(conversation: Conversation,
                 responses: Sequence[str],
                 *,
                 template: Union[str, GRMTemplate] = "default",
                 hint_best: int | None = None,
                 demonstrations: Sequence[str] = (),
                 output_prefix: str = "",
                 chat_style: str = "raw") -> str:
  """Builds the GRM input for one item.

  Layout: `demo_1 \\n demo_2 \\n ... task [hint] ` then, after any chat wrapping, `output_prefix`. With a chat
  style the demonstrations sit inside the user turn; the prefix opens the model's answer either way.

  Args:
    conversation: turns for `format_conversation`.
    responses: the n responses in the order shown.
    template: a registered name or a `GRMTemplate`.
    hint_best: 0-based index of the best response for hinted RFT sampling (rendered 1-based); None: no hint.
    demonstrations: complete worked examples (see `render_demonstration`) placed before the task.
    output_prefix: text the model continues from, e.g. "Specific Criteria:".
    chat_style: "raw" or "gemma" (see `wrap_chat`).

  Returns:
    The prompt text.
  """
  tpl = get_template(template)
  text = _task_body(conversation, responses, tpl)
  if hint_best is not None:
    if len(responses) < 2:
      raise ValueError("hint_best needs at least 2 responses")
    if not 0 <= hint_best < len(responses):
      raise ValueError(f"hint_best={hint_best} outside [0, {len(responses)})")
    text += tpl.hint_suffix.format(j=hint_best + 1) + "\n"
  if demonstrations:
    text = DEMO_SEPARATOR.join(list(demonstrations) + [text])
  return wrap_chat(text, chat_style) + output_prefix


def format_answer(principles: str, analysis: str, scores: Sequence[int]) -> str:
  """The three answer lines the templates ask for; `scores: int[n]` go in `\\boxed{..}`."""
  boxed = "\\boxed{" + ", ".join(str(int(s)) for s in scores) + "}"
  return f"Specific Criteria: {principles}\nAnalysis: {analysis}\nScores: {boxed}\n"


def render_demonstration(conversation: Conversation,
                         responses: Sequence[str],
                         principles: str,
                         analysis: str,
                         scores: Sequence[int],
                         template: Union[str, GRMTemplate] = "default") -> str:
  """One worked example: the task prompt followed by its ideal answer, matching `template` exactly.

  Args:
    conversation: turns for `format_conversation`.
    responses: the n responses.
    principles: the "Specific Criteria" line content.
    analysis: the "Analysis" line content.
    scores: int[n], one per response, within the template's score range.
    template: a registered name or a `GRMTemplate`.

  Returns:
    Prompt plus answer, ending with a newline.
  """
  tpl = get_template(template)
  if len(scores) != len(responses):
    raise ValueError(f"expected {len(responses)} scores, got {len(scores)}")
  lo, hi = tpl.score_range
  for s in scores:
    if not lo <= s <= hi:
      raise ValueError(f"demonstration score {s} outside [{lo}, {hi}]")
  return _task_body(conversation, responses, tpl) + format_answer(principles, analysis, scores)


def meta_rm_prompt(conversation: Conversation, responses: Sequence[str]) -> str:
  """The meta RM's prompt (appendix G): context and numbered responses, no criteria."""
  blocks = _format_responses(responses, TEMPLATES["default"])
  return META_RM_TEMPLATE.format(conversation=format_conversation(conversation), responses=blocks)


def meta_rm_input(conversation: Conversation,
                  responses: Sequence[str],
                  trajectory: str,
                  *,
                  chat_style: str = "raw") -> str:
  """The meta RM's full input: prompt, then the GRM trajectory (principles + critique) as the answer.

  Our choice (the paper encloses both in DeepSeek-V3's chat template): "raw" joins them with a newline;
  "gemma" puts the trajectory in a closed model turn, so the scalar head reads the `<end_of_turn>` position.
  The responses must be in the order the GRM saw them, since the critique refers to them by position.
  """
  prompt = meta_rm_prompt(conversation, responses)
  if chat_style == "raw":
    return f"{prompt}\n{trajectory}"
  return wrap_chat(prompt, chat_style) + trajectory + "<end_of_turn>"
