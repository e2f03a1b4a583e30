"""The pointwise generative reward model: prompts, score parsing, Eq. 10 correctness, voting and the GRM kernel."""

from spct_jax.grm.parsing import NO_SCORES_ERROR, ParsedScores, parse_batch, parse_scores
from spct_jax.grm.reward import check_ratings, is_correct, rule_reward
from spct_jax.grm.scorer import GRM, GRMOptions, GRMResult, build_prompts, parse_texts
from spct_jax.grm.templates import (CHAT_STYLES, META_RM_TEMPLATE, TEMPLATES, GRMTemplate, build_prompt,
                                    format_answer, format_conversation, get_template, meta_rm_input,
                                    meta_rm_prompt, render_demonstration, wrap_chat)
from spct_jax.grm.voting import accuracy, best_index, meta_rm_keep, response_orders, unshuffle, vote, vote_items

__all__ = [
    "CHAT_STYLES", "GRM", "META_RM_TEMPLATE", "NO_SCORES_ERROR", "TEMPLATES", "GRMOptions", "GRMResult",
    "GRMTemplate", "ParsedScores", "accuracy", "best_index", "build_prompt", "build_prompts", "check_ratings",
    "format_answer", "format_conversation", "get_template", "is_correct", "meta_rm_input", "meta_rm_keep",
    "meta_rm_prompt", "parse_batch", "parse_scores", "parse_texts", "render_demonstration", "response_orders",
    "rule_reward", "unshuffle", "vote", "vote_items", "wrap_chat",
]
