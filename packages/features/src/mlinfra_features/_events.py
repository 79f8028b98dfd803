"""Product events and their annotations for the demo warehouse.

The event classifier learns to put a product event into one of the 24 fine categories of the
event taxonomy (``taxonomy/v1.yaml``; each fine category has one of 6 coarse parents). This
module generates the raw events and a small set of human annotations, from a hidden process
documented here so that tests can state what a model should find.

Events
------
1. **Who and when.** Each customer gets an activity level ``exp(N(0, 0.8))``. An event picks
   a customer with probability proportional to activity times the length of the time the
   customer is alive inside the window, then a time uniformly in that stretch. So every event
   falls in ``(start, end]`` while its customer is alive (``signup_at <= ts`` and, when the
   customer churned, ``ts < churned_at``), with no rejection step.
2. **Category.** ``true_category`` is drawn from a fixed, skewed prior (``_CATEGORIES``):
   ``user_engagement`` and ``feature_usage`` are about 14% each, ``security_alert`` and
   ``payment_failure`` about 1%. It does not depend on the customer or the time.
3. **Confusable pairs.** Six pairs of fine categories, each under one parent, look alike
   (``_PAIRS``): user_engagement/feature_usage, payment_success/invoice_activity,
   content_sharing/commenting, permission_change/user_provisioning, api_usage/webhook_delivery
   and error_report/performance_issue. The two categories of a pair share an event name
   and a module and have numbers of the same order, and a share of their events (30% for the
   engagement pair, 15% for the others) is *ambiguous*: the name, module and text of an
   ambiguous event are drawn half from its own category's distributions and half from the
   partner's, so nothing but the numbers tells the two apart.
4. **What the event looks like**, given the category:

   - ``name``: uniform over the category's 3-5 event names (``dashboard_viewed``, ...); a
     pair shares one name (and onboarding shares ``app_opened`` with user_engagement).
   - ``module``: the category's own module weights (mass on one or two modules) mixed with
     10% spread evenly over all modules.
   - ``text``: 5-10 words, each drawn from the category's own words (40%), the words its
     pair shares (20%; categories outside a pair use their own words instead), its
     parent's words (15%) and generic product words (25%).
   - ``duration_s`` ~ lognormal around a category median (0.3 s for an API call, ~7 min
     for a support request); ``items_count`` ~ Poisson with a category mean (500 for a data
     import); ``value_usd`` is positive only for billing categories (and sometimes for
     metered API usage and imports), lognormal around a category median, in cents.

5. Events are sorted by time (then customer) and numbered ``event_id`` 1..N.

Annotations
-----------
A uniform sample of ``n_annotated`` events (without replacement) is labelled each by
``annotators_per_event`` distinct annotators chosen uniformly from ``n_annotators``
(``ann_01``, ...). An annotator labels an event of true category ``c`` wrongly with:

- the pair partner of ``c``: 45% on ambiguous events; otherwise 15% for the engagement pair
  and 8% for the other pairs, so user_engagement <-> feature_usage is by far the most
  confused pair;
- specific other categories that look related (``_SLIPS``, 2-6% each), some across parents:
  onboarding -> user_engagement, team_invite <-> user_provisioning, sso_configuration <->
  integration_setup, payment_failure -> support_request, security_alert -> error_report,
  and a few more;
- any other category, uniformly: 10% in all.

Each probability is scaled by the annotator's carelessness, evenly spaced from 0.75
(``ann_01``, the most careful) to 1.25 (the last annotator). Annotators err independently
given the event; their errors correlate only through ambiguous events.

Calibration: with the defaults (500 events, 3 of 6 annotators each), Fleiss' kappa is about
0.61 on fine labels and about 0.78 on coarse labels (labels mapped to their parent), with a
sampling spread of about 0.02 from seed to seed.
"""

import importlib.resources
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

import numpy as np
import polars as pl
import yaml

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TOKENS_MIN, _TOKENS_MAX = 5, 10


@dataclass(frozen=True)
class Taxonomy:
    """One version of the event taxonomy: fine categories, their parents and the protected."""

    version: str
    names: tuple[str, ...]
    parents: Mapping[str, str]
    descriptions: Mapping[str, str]
    protected: tuple[str, ...]

    @property
    def coarse_names(self) -> tuple[str, ...]:
        """Coarse parents in order of first appearance."""
        return tuple(dict.fromkeys(self.parents[name] for name in self.names))


def load_taxonomy_v1() -> Taxonomy:
    """Read the event taxonomy v1 shipped with the package."""
    resource = importlib.resources.files("mlinfra_features") / "taxonomy" / "v1.yaml"
    raw = yaml.safe_load(resource.read_text(encoding="utf-8"))
    names = tuple(str(c["name"]) for c in raw["categories"])
    if len(set(names)) != len(names):
        raise ValueError(f"taxonomy {raw['version']}: fine category names are not unique")
    protected = tuple(str(p) for p in raw.get("protected", []))
    unknown = sorted(set(protected) - set(names))
    if unknown:
        raise ValueError(f"taxonomy {raw['version']}: protected {unknown} are not categories")
    return Taxonomy(
        version=str(raw["version"]),
        names=names,
        parents={str(c["name"]): str(c["parent"]) for c in raw["categories"]},
        descriptions={str(c["name"]): str(c["description"]) for c in raw["categories"]},
        protected=protected,
    )


class _Category(NamedTuple):
    prior: float
    names: tuple[str, ...]
    modules: dict[str, float]
    words: tuple[str, ...]
    duration_s: tuple[float, float]  # median, sigma of a lognormal
    items_mean: float  # Poisson mean
    value_usd: tuple[float, float, float] = (0.0, 0.0, 0.0)  # P(> 0), median, sigma


_CATEGORIES: dict[str, _Category] = {
    "user_engagement": _Category(
        0.14,
        ("session_started", "page_viewed", "app_opened", "dashboard_viewed"),
        {"analytics": 0.6, "workspace": 0.3, "reports": 0.1},
        ("session", "opened", "visited", "page", "homepage", "browsed", "returned", "daily"),
        (180.0, 1.0),
        3.0,
    ),
    "feature_usage": _Category(
        0.14,
        ("feature_used", "filter_applied", "chart_created", "shortcut_used", "dashboard_viewed"),
        {"analytics": 0.5, "reports": 0.3, "editor": 0.2},
        ("feature", "filter", "chart", "applied", "shortcut", "toggled", "configured", "widget"),
        (120.0, 1.0),
        4.0,
    ),
    "onboarding": _Category(
        0.03,
        ("onboarding_step_completed", "tutorial_started", "checklist_item_done", "app_opened"),
        {"onboarding": 0.8, "workspace": 0.2},
        ("tutorial", "welcome", "checklist", "guide", "first", "step", "tour", "setup"),
        (240.0, 0.8),
        2.0,
    ),
    "search": _Category(
        0.06,
        ("search_performed", "search_result_clicked", "saved_search_created"),
        {"search": 0.8, "analytics": 0.2},
        ("search", "query", "results", "keyword", "found", "typed", "lookup", "matches"),
        (20.0, 0.8),
        8.0,
    ),
    "subscription_change": _Category(
        0.02,
        ("plan_upgraded", "plan_downgraded", "seats_changed", "trial_converted"),
        {"billing": 0.8, "admin": 0.2},
        ("plan", "upgraded", "downgraded", "seats", "tier", "trial", "converted", "annual"),
        (60.0, 0.6),
        5.0,
        (1.0, 400.0, 0.9),
    ),
    "payment_success": _Category(
        0.03,
        ("payment_succeeded", "card_charged", "invoice_paid"),
        {"billing": 0.9, "admin": 0.1},
        ("charged", "succeeded", "receipt", "approved", "settled", "captured", "success"),
        (3.0, 0.5),
        1.0,
        (1.0, 250.0, 1.0),
    ),
    "payment_failure": _Category(
        0.01,
        ("payment_failed", "card_declined", "dunning_email_sent"),
        {"billing": 0.9, "admin": 0.1},
        ("declined", "failed", "insufficient", "expired", "dunning", "retry", "overdue"),
        (4.0, 0.6),
        1.0,
        (1.0, 250.0, 1.0),
    ),
    "invoice_activity": _Category(
        0.03,
        ("invoice_created", "invoice_downloaded", "credit_note_issued", "invoice_paid"),
        {"billing": 0.9, "reports": 0.1},
        ("invoice", "pdf", "downloaded", "issued", "credit", "tax", "statement", "vat"),
        (10.0, 0.7),
        2.0,
        (0.9, 300.0, 1.0),
    ),
    "team_invite": _Category(
        0.03,
        ("member_invited", "invite_accepted", "invite_resent"),
        {"workspace": 0.7, "admin": 0.3},
        ("invited", "invite", "teammate", "accepted", "joined", "colleague", "email"),
        (30.0, 0.7),
        2.0,
    ),
    "content_sharing": _Category(
        0.06,
        ("doc_shared", "link_shared", "share_permission_set", "mention_added"),
        {"editor": 0.6, "workspace": 0.4},
        ("shared", "link", "public", "external", "copied", "published", "embed", "audience"),
        (25.0, 0.7),
        1.5,
    ),
    "commenting": _Category(
        0.07,
        ("comment_added", "comment_resolved", "reaction_added", "mention_added"),
        {"editor": 0.7, "workspace": 0.3},
        ("comment", "reply", "thread", "resolved", "reaction", "discussion", "feedback"),
        (45.0, 0.7),
        1.0,
    ),
    "workspace_management": _Category(
        0.03,
        ("workspace_created", "project_archived", "folder_renamed", "workspace_settings_updated"),
        {"workspace": 0.8, "admin": 0.2},
        ("workspace", "project", "folder", "archived", "renamed", "created", "organized"),
        (40.0, 0.7),
        2.0,
    ),
    "security_alert": _Category(
        0.01,
        ("suspicious_login_detected", "mfa_challenge_failed", "api_key_leak_detected"),
        {"admin": 0.7, "api": 0.3},
        ("suspicious", "mfa", "blocked", "location", "leak", "anomalous", "breach", "locked"),
        (1.0, 0.8),
        1.0,
    ),
    "permission_change": _Category(
        0.03,
        ("role_changed", "permission_granted", "permission_revoked", "user_deactivated"),
        {"admin": 0.9, "workspace": 0.1},
        ("role", "permission", "granted", "revoked", "editor", "viewer", "owner", "rights"),
        (15.0, 0.7),
        2.0,
    ),
    "user_provisioning": _Category(
        0.02,
        ("user_provisioned", "scim_sync_completed", "user_deactivated"),
        {"admin": 0.9, "integrations": 0.1},
        ("provisioned", "scim", "directory", "deprovisioned", "license", "seat", "created"),
        (5.0, 0.7),
        10.0,
    ),
    "sso_configuration": _Category(
        0.01,
        ("sso_enabled", "saml_config_updated", "idp_certificate_rotated"),
        {"admin": 0.8, "integrations": 0.2},
        ("sso", "saml", "idp", "certificate", "okta", "login", "domain", "enforced"),
        (300.0, 0.7),
        1.0,
    ),
    "integration_setup": _Category(
        0.02,
        ("integration_connected", "oauth_app_authorized", "integration_disconnected"),
        {"integrations": 0.9, "admin": 0.1},
        ("connected", "integration", "oauth", "slack", "salesforce", "authorized", "app"),
        (200.0, 0.8),
        1.0,
    ),
    "api_usage": _Category(
        0.08,
        ("api_request_made", "api_token_created", "rate_limit_hit", "endpoint_called"),
        {"api": 0.8, "integrations": 0.2},
        ("request", "token", "rate", "limit", "sdk", "json", "get", "post"),
        (0.3, 0.9),
        40.0,
        (0.3, 0.5, 1.0),
    ),
    "webhook_delivery": _Category(
        0.05,
        ("webhook_delivered", "webhook_failed", "webhook_retried", "endpoint_called"),
        {"api": 0.6, "integrations": 0.4},
        ("webhook", "delivered", "payload", "retried", "callback", "signature", "subscriber"),
        (0.5, 0.9),
        20.0,
    ),
    "data_import": _Category(
        0.03,
        ("csv_imported", "bulk_import_started", "sync_job_completed"),
        {"integrations": 0.7, "workspace": 0.3},
        ("import", "csv", "rows", "bulk", "sync", "uploaded", "mapped", "records"),
        (90.0, 1.1),
        500.0,
        (0.1, 20.0, 1.0),
    ),
    "error_report": _Category(
        0.04,
        ("error_shown", "crash_reported", "request_failed"),
        {"analytics": 0.3, "editor": 0.3, "api": 0.2, "help_center": 0.2},
        ("error", "crash", "exception", "broken", "500", "stacktrace", "unexpected", "bug"),
        (2.0, 1.0),
        1.0,
    ),
    "performance_issue": _Category(
        0.02,
        ("slow_page_load", "request_timeout", "request_failed"),
        {"analytics": 0.4, "reports": 0.3, "api": 0.3},
        ("slow", "timeout", "latency", "loading", "lag", "spinner", "seconds", "degraded"),
        (12.0, 0.6),
        1.0,
    ),
    "support_request": _Category(
        0.03,
        ("ticket_opened", "chat_started", "help_article_viewed"),
        {"help_center": 0.9, "billing": 0.1},
        ("ticket", "support", "agent", "chat", "help", "question", "article", "contacted"),
        (400.0, 0.9),
        1.0,
    ),
    "product_feedback": _Category(
        0.02,
        ("feedback_submitted", "nps_response", "feature_requested"),
        {"help_center": 0.6, "analytics": 0.4},
        ("nps", "survey", "suggestion", "rating", "wish", "request", "score", "idea"),
        (90.0, 0.8),
        1.0,
    ),
}

# fmt: off
_MODULES = (
    "analytics", "reports", "editor", "search", "onboarding", "billing", "workspace", "admin",
    "integrations", "api", "help_center",
)
# fmt: on
_MODULE_LEAK = 0.10  # share of each category's module mass spread evenly over all modules

# Confusable pairs: (a, b, share of ambiguous events, annotator base confusion rate).
_PAIRS: tuple[tuple[str, str, float, float], ...] = (
    ("user_engagement", "feature_usage", 0.30, 0.15),
    ("payment_success", "invoice_activity", 0.15, 0.08),
    ("content_sharing", "commenting", 0.15, 0.08),
    ("permission_change", "user_provisioning", 0.15, 0.08),
    ("api_usage", "webhook_delivery", 0.15, 0.08),
    ("error_report", "performance_issue", 0.15, 0.08),
)
# fmt: off
_PAIR_WORDS: dict[frozenset[str], tuple[str, ...]] = {
    frozenset({"user_engagement", "feature_usage"}):
        ("dashboard", "report", "viewed", "clicked", "used", "screen"),
    frozenset({"payment_success", "invoice_activity"}): ("paid", "amount", "billing", "due"),
    frozenset({"content_sharing", "commenting"}): ("doc", "mention", "collaborator", "note"),
    frozenset({"permission_change", "user_provisioning"}): ("user", "access", "deactivated"),
    frozenset({"api_usage", "webhook_delivery"}): ("endpoint", "http", "status", "response"),
    frozenset({"error_report", "performance_issue"}): ("request", "failed", "page", "issue"),
}
# fmt: on
_PARENT_WORDS: dict[str, tuple[str, ...]] = {
    "engagement": ("app", "navigated", "tab", "view"),
    "billing": ("payment", "card", "account", "usd"),
    "collaboration": ("team", "member", "together", "workspace"),
    "admin_security": ("admin", "security", "policy", "settings"),
    "integrations": ("external", "connector", "data", "api"),
    "reliability_support": ("problem", "reported", "customer", "status"),
}
# fmt: off
_GENERIC_WORDS = (
    "the", "a", "on", "from", "via", "web", "mobile", "desktop", "today", "new", "again", "by",
    "user", "account", "item", "for",
)
# fmt: on
_TEXT_MIX = {"own": 0.40, "pair": 0.20, "parent": 0.15, "generic": 0.25}

# Annotator slips beyond the pair partner: (true category, label given, rate).
_SLIPS: tuple[tuple[str, str, float], ...] = (
    ("onboarding", "user_engagement", 0.06),
    ("user_engagement", "onboarding", 0.02),
    ("search", "feature_usage", 0.04),
    ("subscription_change", "invoice_activity", 0.05),
    ("payment_failure", "support_request", 0.04),
    ("team_invite", "user_provisioning", 0.06),
    ("user_provisioning", "team_invite", 0.04),
    ("sso_configuration", "integration_setup", 0.06),
    ("integration_setup", "sso_configuration", 0.03),
    ("data_import", "integration_setup", 0.04),
    ("security_alert", "error_report", 0.04),
    ("support_request", "product_feedback", 0.04),
    ("product_feedback", "support_request", 0.04),
    ("workspace_management", "permission_change", 0.03),
)
_AMBIGUOUS_CONFUSION = 0.45  # rate of labelling an ambiguous event with its pair partner
_RANDOM_ERROR = 0.10  # rate of a uniformly random wrong label
_CARELESSNESS = (0.75, 1.25)  # error multiplier of the first and of the last annotator

EVENT_SCHEMA: dict[str, pl.DataType] = {
    "event_id": pl.Int64(),
    "customer_id": pl.Int64(),
    "event_timestamp": pl.Datetime("us", "UTC"),
    "name": pl.Utf8(),
    "module": pl.Utf8(),
    "text": pl.Utf8(),
    "duration_s": pl.Float64(),
    "items_count": pl.Int64(),
    "value_usd": pl.Float64(),
    "true_category": pl.Utf8(),
}
ANNOTATION_SCHEMA: dict[str, pl.DataType] = {
    "event_id": pl.Int64(),
    "annotator_id": pl.Utf8(),
    "label": pl.Utf8(),
}


def _epoch_us(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(microseconds=1)


def _draw(rng: np.random.Generator, probs: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """One draw per element of ``rows`` from the categorical distribution ``probs[row]``.

    All rows are inverted in one ``searchsorted``: row ``g``'s CDF is shifted by ``g`` so the
    rows laid end to end stay sorted.
    """
    n_rows, n_outcomes = probs.shape
    cdf = np.cumsum(probs / probs.sum(axis=1, keepdims=True), axis=1)
    cdf[:, -1] = 1.0
    shifted = (cdf + np.arange(n_rows)[:, None]).ravel()
    u = rng.random(rows.shape) + rows
    flat = np.searchsorted(shifted, u.ravel(), side="right").reshape(rows.shape)
    return np.minimum(flat - rows * n_outcomes, n_outcomes - 1)


class _Tables(NamedTuple):
    names: list[str]  # fine categories in taxonomy order
    prior: np.ndarray  # (K,)
    partner: np.ndarray  # (K,) index of the pair partner, -1 if none
    ambiguous_share: np.ndarray  # (K,)
    event_names: list[str]
    name_probs: np.ndarray  # (2K, names): rows K.. are the ambiguous looks
    module_probs: np.ndarray  # (2K, modules)
    vocab: list[str]
    word_probs: np.ndarray  # (2K, vocab)
    errors: np.ndarray  # (2K, K) wrong-label rates before carelessness, zero diagonal


def _tables(taxonomy: Taxonomy) -> _Tables:
    names = list(taxonomy.names)
    if set(names) != set(_CATEGORIES):
        raise RuntimeError(
            f"taxonomy {taxonomy.version} and the event generator disagree on categories: "
            f"{sorted(set(names) ^ set(_CATEGORIES))}"
        )
    index = {name: i for i, name in enumerate(names)}
    k = len(names)
    specs = [_CATEGORIES[name] for name in names]
    prior = np.array([s.prior for s in specs])
    partner = np.full(k, -1)
    ambiguous_share = np.zeros(k)
    base_confusion = np.zeros(k)
    for a, b, share, rate in _PAIRS:
        partner[index[a]], partner[index[b]] = index[b], index[a]
        ambiguous_share[[index[a], index[b]]] = share
        base_confusion[[index[a], index[b]]] = rate

    event_names = sorted({n for s in specs for n in s.names})
    name_probs = np.zeros((k, len(event_names)))
    module_probs = np.full((k, len(_MODULES)), _MODULE_LEAK / len(_MODULES))
    vocab = sorted(
        {w for s in specs for w in s.words}
        | {w for ws in _PAIR_WORDS.values() for w in ws}
        | {w for ws in _PARENT_WORDS.values() for w in ws}
        | set(_GENERIC_WORDS)
    )
    word_index = {w: i for i, w in enumerate(vocab)}
    word_probs = np.zeros((k, len(vocab)))

    def spread(row: np.ndarray, words: tuple[str, ...], mass: float) -> None:
        for w in words:
            row[word_index[w]] += mass / len(words)

    for i, (name, s) in enumerate(zip(names, specs, strict=True)):
        for n in s.names:
            name_probs[i, event_names.index(n)] += 1 / len(s.names)
        for module, weight in s.modules.items():
            module_probs[i, _MODULES.index(module)] += (1 - _MODULE_LEAK) * weight
        pair_words = _PAIR_WORDS.get(frozenset({name, names[partner[i]]}), ())
        own_mass = _TEXT_MIX["own"] + (0.0 if pair_words else _TEXT_MIX["pair"])
        spread(word_probs[i], s.words, own_mass)
        spread(word_probs[i], pair_words, _TEXT_MIX["pair"])
        spread(word_probs[i], _PARENT_WORDS[taxonomy.parents[name]], _TEXT_MIX["parent"])
        spread(word_probs[i], _GENERIC_WORDS, _TEXT_MIX["generic"])

    # Ambiguous looks: half the category's own distribution, half its partner's.
    has_partner = partner >= 0
    mate = np.where(has_partner, partner, np.arange(k))

    def ambiguous(probs: np.ndarray) -> np.ndarray:
        return np.vstack([probs, 0.5 * probs + 0.5 * probs[mate]])

    errors = np.full((2 * k, k), _RANDOM_ERROR / (k - 1))
    for true, given, rate in _SLIPS:
        errors[[index[true], k + index[true]], index[given]] += rate
    rows = np.flatnonzero(has_partner)
    errors[rows, partner[rows]] += base_confusion[rows]
    errors[k + rows, partner[rows]] += _AMBIGUOUS_CONFUSION
    errors[np.arange(2 * k), np.tile(np.arange(k), 2)] = 0.0

    return _Tables(
        names=names,
        prior=prior / prior.sum(),
        partner=partner,
        ambiguous_share=ambiguous_share,
        event_names=event_names,
        name_probs=ambiguous(name_probs),
        module_probs=ambiguous(module_probs),
        vocab=vocab,
        word_probs=ambiguous(word_probs),
        errors=errors,
    )


def _check_customers(customers: pl.DataFrame) -> None:
    missing = sorted({"customer_id", "signup_at", "churned_at"} - set(customers.columns))
    if missing:
        raise ValueError(
            f"customers: missing columns {missing}; expected customer_id, signup_at, churned_at"
        )


def _sample_times(
    rng: np.random.Generator,
    customers: pl.DataFrame,
    start: datetime,
    end: datetime,
    n_events: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Customer ids and epoch-microsecond times of events, all while the customer is alive."""
    lo_window, hi_window = _epoch_us(start) + 1, _epoch_us(end) + 1  # (start, end]
    if hi_window <= lo_window:
        raise ValueError(f"end ({end}) must be after start ({start})")
    ids = customers["customer_id"].cast(pl.Int64).to_numpy()
    signup = customers["signup_at"].dt.epoch("us").to_numpy()
    churn = customers["churned_at"].dt.epoch("us").fill_null(hi_window).to_numpy()
    lo = np.maximum(signup, lo_window)
    hi = np.minimum(churn, hi_window)  # exclusive
    alive_us = np.clip(hi - lo, 0, None).astype(np.float64)
    activity = np.exp(rng.normal(0.0, 0.8, size=len(ids)))
    weight = alive_us * activity
    if n_events > 0 and weight.sum() <= 0:
        raise ValueError(f"customers: nobody is alive between {start} and {end}")
    if n_events == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    who = rng.choice(len(ids), size=n_events, p=weight / weight.sum())
    offset = (rng.random(n_events) * (hi[who] - lo[who])).astype(np.int64)
    ts = np.minimum(lo[who] + offset, hi[who] - 1)
    return ids[who], ts


def generate_product_events(
    rng: np.random.Generator,
    customers: pl.DataFrame,
    start: datetime,
    end: datetime,
    n_events: int,
    *,
    n_annotated: int = 500,
    annotators_per_event: int = 3,
    n_annotators: int = 6,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Generate ``product_events`` and ``event_annotations`` (see the module docstring).

    ``customers`` needs ``customer_id``, ``signup_at`` and ``churned_at`` (null while the
    customer is active); ``start`` and ``end`` are UTC (naive datetimes are read as UTC).
    The result depends only on the inputs and on the state of ``rng``.
    """
    if n_events < 0:
        raise ValueError(f"n_events must be >= 0, got {n_events}")
    if n_annotated < 0:
        raise ValueError(f"n_annotated must be >= 0, got {n_annotated}")
    if not 1 <= annotators_per_event <= n_annotators:
        raise ValueError(
            f"annotators_per_event must be between 1 and n_annotators ({n_annotators}), "
            f"got {annotators_per_event}"
        )
    _check_customers(customers)
    taxonomy = load_taxonomy_v1()
    t = _tables(taxonomy)
    k = len(t.names)

    customer_id, ts = _sample_times(rng, customers, start, end, n_events)
    order = np.lexsort((customer_id, ts))
    customer_id, ts = customer_id[order], ts[order]

    category = rng.choice(k, size=n_events, p=t.prior)
    ambiguous = rng.random(n_events) < t.ambiguous_share[category]
    look = category + k * ambiguous
    name = _draw(rng, t.name_probs, look)
    module = _draw(rng, t.module_probs, look)
    n_tokens = rng.integers(_TOKENS_MIN, _TOKENS_MAX + 1, size=n_events)
    tokens = _draw(rng, t.word_probs, np.repeat(look[:, None], _TOKENS_MAX, axis=1))

    specs = [_CATEGORIES[n] for n in t.names]
    dur = np.array([s.duration_s for s in specs])
    duration_s = np.round(
        dur[category, 0] * np.exp(dur[category, 1] * rng.normal(size=n_events)), 3
    )
    items_count = rng.poisson(np.array([s.items_mean for s in specs])[category])
    val = np.array([s.value_usd for s in specs])
    paid = rng.random(n_events) < val[category, 0]
    amount = val[category, 1] * np.exp(val[category, 2] * rng.normal(size=n_events))
    value_usd = np.where(paid, np.round(amount, 2), 0.0)

    vocab = pl.Series(t.vocab, dtype=pl.Utf8)
    words = pl.DataFrame(
        {f"w{j}": vocab.gather(tokens[:, j]) for j in range(_TOKENS_MAX)} | {"n": n_tokens}
    )
    text = words.select(
        pl.concat_str(
            [pl.when(pl.col("n") > j).then(pl.col(f"w{j}")) for j in range(_TOKENS_MAX)],
            separator=" ",
            ignore_nulls=True,
        )
    ).to_series()

    events = pl.DataFrame(
        {
            "event_id": np.arange(1, n_events + 1, dtype=np.int64),
            "customer_id": customer_id,
            "event_timestamp": pl.Series(ts, dtype=pl.Int64)
            .cast(pl.Datetime("us"))
            .dt.replace_time_zone("UTC"),
            "name": pl.Series(t.event_names, dtype=pl.Utf8).gather(name),
            "module": pl.Series(_MODULES, dtype=pl.Utf8).gather(module),
            "text": text,
            "duration_s": duration_s,
            "items_count": items_count.astype(np.int64),
            "value_usd": value_usd,
            "true_category": pl.Series(t.names, dtype=pl.Utf8).gather(category),
        },
        schema=EVENT_SCHEMA,
    )

    annotations = _annotate(
        rng,
        t,
        category=category,
        ambiguous=ambiguous,
        n_annotated=n_annotated,
        annotators_per_event=annotators_per_event,
        n_annotators=n_annotators,
    )
    return events, annotations


def _annotate(
    rng: np.random.Generator,
    t: _Tables,
    *,
    category: np.ndarray,
    ambiguous: np.ndarray,
    n_annotated: int,
    annotators_per_event: int,
    n_annotators: int,
) -> pl.DataFrame:
    k = len(t.names)
    n = min(n_annotated, len(category))
    if n == 0:
        return pl.DataFrame(schema=ANNOTATION_SCHEMA)
    picked = np.sort(rng.choice(len(category), size=n, replace=False))
    who = np.argsort(rng.random((n, n_annotators)), axis=1)[:, :annotators_per_event]
    who = np.sort(who, axis=1).ravel()
    look = np.repeat(category[picked] + k * ambiguous[picked], annotators_per_event)
    carelessness = np.linspace(*_CARELESSNESS, n_annotators)
    probs = t.errors[look] * carelessness[who][:, None]
    truth = look % k
    probs[np.arange(len(look)), truth] = np.clip(1.0 - probs.sum(axis=1), 0.05, None)
    label = _draw(rng, probs, np.arange(len(look)))
    return pl.DataFrame(
        {
            "event_id": np.repeat(picked + 1, annotators_per_event).astype(np.int64),
            "annotator_id": [f"ann_{j + 1:02d}" for j in who],
            "label": pl.Series(t.names, dtype=pl.Utf8).gather(label),
        },
        schema=ANNOTATION_SCHEMA,
    )
