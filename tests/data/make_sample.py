"""Writes sample_1000.ndjson: 1,000 nested JSON records for the compute plugin tests.

Deterministic (stdlib ``random`` with a fixed seed, so it does not depend on numpy's
generators): ``python tests/data/make_sample.py`` rewrites the same file byte for byte.

What the records exercise: nested objects (``customer.address.city``), JSON numbers with
a few nulls, numbers as strings (``sensor.pressure``), JSON booleans (``active``),
``"true"``/``"false"`` strings (``verified``), ISO 8601 timestamps with ``Z`` and with
offsets (``timestamp``) over three days, dates (``shipped_at``), lists (``tags``), review
text with positive, negative and neutral sentences (some null), and injected outliers in
``order.amount`` (records 100, 250, 400, 555, 700, 901) and ``sensor.temperature``
(records 42, 333, 777, 999).
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

SEED = 20240301
COUNT = 1000
START = datetime(2024, 3, 1, tzinfo=UTC)
AMOUNT_OUTLIERS = {100, 250, 400, 555, 700, 901}
TEMPERATURE_OUTLIERS = {42: 80.5, 333: -31.0, 777: 95.25, 999: 71.0}

POSITIVE = [
    "I love this product, it works great!",
    "Excellent quality and really fast delivery.",
    "The support team was very helpful and kind :)",
    "AMAZING value for the price, highly recommended.",
    "Setup took 5 minutes and everything is perfect.",
    "Best purchase I made this year, thank you!",
]
NEGATIVE = [
    "Terrible experience, the item arrived broken.",
    "I am very disappointed with the service.",
    "Worst purchase ever, do NOT buy this!",
    "The battery died after 2 days, awful.",
    "Customer support was rude and useless.",
    "It is slow, noisy and I hate the design.",
]
NEUTRAL = [
    "The package arrived on Tuesday.",
    "I ordered 3 units in March.",
    "The box contains a manual and a cable.",
    "It is available in blue and grey.",
    "The delivery was handled by a local courier.",
    "Model number 4417-B was shipped.",
]
SEGMENTS = ["retail", "wholesale", "online", "enterprise"]
CITIES = [("Berlin", "DE"), ("Lyon", "FR"), ("Porto", "PT"), ("Austin", "US"), ("Osaka", "JP")]
TAGS = ["gift", "express", "bulk", "promo", "returning", "new"]
OFFSETS = [UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-5))]


def review(rng: random.Random) -> str | None:
    """One to three sentences, mostly of one mood, sometimes mixed; 2% null."""
    if rng.random() < 0.02:
        return None
    mood = rng.choice([POSITIVE, NEGATIVE, NEUTRAL])
    sentences = [rng.choice(mood)]
    for _ in range(rng.randint(0, 2)):
        pool = mood if rng.random() < 0.7 else rng.choice([POSITIVE, NEGATIVE, NEUTRAL])
        sentences.append(rng.choice(pool))
    return " ".join(sentences)


def record(rng: random.Random, number: int) -> dict[str, object]:
    """The record with id ``number``."""
    moment = START + timedelta(seconds=rng.randrange(72 * 3600))
    zone = rng.choice(OFFSETS)
    stamp = moment.astimezone(zone).isoformat().replace("+00:00", "Z")
    city, country = rng.choice(CITIES)
    amount = round(rng.lognormvariate(3.5, 0.5), 2)
    if number in AMOUNT_OUTLIERS:
        amount = round(amount * 40 + 2500, 2)
    temperature = round(rng.gauss(21.0, 1.5), 2)
    temperature = TEMPERATURE_OUTLIERS.get(number, temperature)
    order: dict[str, object] = {"amount": amount, "quantity": rng.randint(1, 10)}
    if rng.random() < 0.8:  # missing key in the other records
        order["discount"] = rng.choice([0.0, 0.05, 0.1, 0.2])
    shipped = moment + timedelta(days=rng.randint(0, 3))
    return {
        "id": number,
        "timestamp": stamp,
        "customer": {
            "id": f"C{rng.randrange(250):04d}",
            "segment": rng.choice(SEGMENTS),
            "address": {"city": city, "country": country},
        },
        "order": order,
        "sensor": {
            "temperature": temperature,
            "pressure": f"{rng.gauss(1013.0, 4.0):.1f}",
        },
        "active": rng.random() < 0.6,
        "verified": rng.choice(["true", "false", "TRUE"]),
        "rating": rng.randint(1, 5) if rng.random() > 0.05 else None,
        "tags": rng.sample(TAGS, rng.randint(0, 3)),
        "shipped_at": shipped.date().isoformat() if rng.random() > 0.1 else None,
        "text": review(rng),
    }


def main() -> None:
    rng = random.Random(SEED)
    lines = [json.dumps(record(rng, n), ensure_ascii=False) for n in range(1, COUNT + 1)]
    target = Path(__file__).with_name("sample_1000.ndjson")
    target.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
