"""The pointwise generative reward model: prompts, score parsing, Eq. 10 correctness, voting and the GRM kernel."""

from spct_jax.grm.parsing import NO_SCORES_ERROR, ParsedScores, parse_batch, parse_scores
from spct_jax.grm.reward import check_ratings, is_correct, ratings_array, rollout_rewards, rule_reward
from spct_jax.grm.scorer import (GRM, GRMOptions, GRMResult, build_prompts, item_prompt, item_templates,
                                 meta_rm_inputs, parse_texts, stop_after_scores)
from spct_jax.grm.templates import (CHAT_STYLES, META_RM_TEMPLATE, TEMPLATES, GRMTemplate, build_prompt,
                                    format_answer, format_conversation, get_template, meta_rm_input,
                                    meta_rm_prompt, render_demonstration, template_for, wrap_chat)
from spct_jax.grm.voting import (accuracy, best_index, meta_rm_keep, response_orders, unshuffle, vote, vote_items,
                                 voted_label)

__all__ = [
    "CHAT_STYLES", "GRM", "META_RM_TEMPLATE", "NO_SCORES_ERROR", "TEMPLATES", "GRMOptions", "GRMResult",
    "GRMTemplate", "ParsedScores", "accuracy", "best_index", "build_prompt", "build_prompts", "check_ratings",
    "format_answer", "format_conversation", "get_template", "is_correct", "item_prompt", "item_templates",
    "meta_rm_input", "meta_rm_inputs", "meta_rm_keep", "meta_rm_prompt", "parse_batch", "parse_scores", "parse_texts",
    "ratings_array", "render_demonstration", "response_orders", "rollout_rewards", "rule_reward", "stop_after_scores",
    "template_for", "unshuffle", "vote", "vote_items", "voted_label", "wrap_chat",
]
