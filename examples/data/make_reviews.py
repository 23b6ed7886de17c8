"""Write examples/data/reviews.jsonl: short synthetic product reviews for `kubeforge batch` (deterministic:
the same file on every run). The dev sandbox uploads it to s3://kubeforge/seed/datasets/reviews/reviews.jsonl.

    python examples/data/make_reviews.py
"""

import json
import random
from pathlib import Path

ROWS = 300
SEED = 13
PRODUCTS = ["kettle", "headphones", "backpack", "desk lamp", "running shoes", "coffee grinder", "keyboard",
            "water bottle", "phone case", "blender", "office chair", "tent"]
OPENINGS = {
    "positive": ["Love this {p}.", "Great {p}, would buy again.", "This {p} exceeded my expectations.",
                 "Really happy with the {p}."],
    "neutral": ["The {p} is okay.", "Decent {p} for the price.", "The {p} does the job, nothing special.",
                "Mixed feelings about this {p}."],
    "negative": ["Disappointed with this {p}.", "The {p} broke after a week.", "Would not recommend this {p}.",
                 "The {p} stopped working quickly."],
}
DETAILS = {
    "positive": ["Shipping was fast.", "Build quality feels solid.", "Battery lasts all day.", "Easy to clean.",
                 "Looks even better in person."],
    "neutral": ["Delivery took a while.", "The color is a bit different from the photo.",
                "Instructions could be clearer.", "It is smaller than I thought."],
    "negative": ["Customer support never answered.", "It arrived scratched.", "The strap snapped.",
                 "Too noisy to use at night.", "Returned it for a refund."],
}
RATINGS = {"positive": (4, 5), "neutral": (3, 3), "negative": (1, 2)}


def reviews(rows: int = ROWS, seed: int = SEED) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for index in range(rows):
        sentiment = rng.choice(sorted(OPENINGS))
        product = rng.choice(PRODUCTS)
        text = " ".join([rng.choice(OPENINGS[sentiment]).format(p=product),
                         *rng.sample(DETAILS[sentiment], k=rng.randint(1, 2))])
        out.append({"id": f"r{index:04d}", "product": product, "rating": rng.randint(*RATINGS[sentiment]),
                    "text": text})
    return out


if __name__ == "__main__":
    path = Path(__file__).with_name("reviews.jsonl")
    path.write_text("".join(json.dumps(row, sort_keys=True) + "\n" for row in reviews()))
    print(f"wrote {path} ({ROWS} reviews)")
