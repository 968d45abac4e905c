"""Everyday chat prompts written from templates, for distilling drafts (train_eagle.py ``--template-prompts``).

Why: a draft learns the target's answers to the prompts it is trained on. The feature draft trained on
prompts budget sampled itself agreed with budget on 0.70 of next tokens for more such prompts but on only
0.55-0.57 for the speculative bench's twelve hand-written questions ("How do I keep basil alive on a
windowsill?"): the sampled prompts are not what people type. These templates cover the kinds of requests
people do type — how-to, why, explain-to, pros and cons, ideas, short writing, comparisons, descriptions,
recommendations — over a few hundred everyday subjects, so the draft sees many answers of that kind.

The bench's prompts stay held out: a generated prompt whose content words (request words such as "how",
"explain", "pros and cons" ignored) overlap one of them by more than ``max_overlap`` (Jaccard) is dropped,
so neither those questions nor ones about the same subject are trained on; the same kinds of request about
other subjects are.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

TASKS = ["keep a houseplant alive", "learn to cook rice", "start running", "save money on groceries",
         "fall asleep faster", "learn a new language", "organise my desk", "write a good cover letter",
         "stop procrastinating", "make friends in a new city", "clean a cast iron pan", "fix a squeaky door",
         "prepare for a job interview", "train a puppy to sit", "grow tomatoes on a balcony", "bake bread at home",
         "get better at public speaking", "plan a road trip", "reduce screen time", "start a vegetable garden",
         "keep my car battery healthy", "remove a coffee stain", "learn to play the guitar", "meditate",
         "write a short story", "choose a laptop", "back up my photos", "stay focused while studying",
         "make a budget", "care for a goldfish", "improve my handwriting", "paint a room", "make pancakes",
         "get rid of fruit flies", "stay warm in winter", "learn to swim as an adult", "brew good coffee",
         "negotiate a raise", "build a birdhouse", "keep bread fresh", "read more books", "plan a birthday party",
         "take better photos with my phone", "drink more water", "learn to type faster", "pack a suitcase",
         "write a haiku", "memorise a speech", "start journaling", "keep my shoes clean", "sharpen a knife",
         "make a cup of tea", "get over jet lag", "teach a child to ride a bike", "calm down before an exam",
         "set up a home network", "choose a good watermelon", "wash wool sweaters", "make a paper airplane"]
CONCEPTS = ["a hash table", "photosynthesis", "inflation", "gravity", "a black hole", "the internet", "a vaccine",
            "compound interest", "machine learning", "the water cycle", "democracy", "an earthquake", "DNA",
            "a recursive function", "electricity", "a rainbow", "the stock market", "evolution", "a volcano",
            "the greenhouse effect", "a blockchain", "the immune system", "a database", "tides", "a computer virus",
            "supply and demand", "the seasons", "an atom", "a neural network", "recycling", "a solar panel",
            "a credit score", "the moon's phases", "encryption", "a password manager", "a thunderstorm",
            "the speed of light", "a cloud server", "an ecosystem", "a loan", "a metaphor", "a sorting algorithm",
            "a hurricane", "the heart", "a time zone", "a compiler", "a fossil", "an orchestra", "a microwave oven"]
AUDIENCES = ["a five-year-old", "a new programmer", "my grandmother", "a high school student", "a beginner",
             "someone who has never heard of it", "a busy manager", "a ten-year-old", "a tourist", "a friend"]
THINGS = ["cats", "dogs", "birds", "bees", "autumn leaves", "onions", "stars", "fish", "owls", "clouds",
          "bananas", "zebras", "plants", "old books", "computers", "bubbles", "whales", "ice cubes", "octopuses",
          "volcanoes", "penguins", "honey", "the ocean", "mountains", "trains", "coffee", "chocolate", "spiders"]
WHY = ["cats purr", "birds migrate", "leaves change colour in autumn", "onions make us cry", "stars twinkle",
       "people yawn", "ice cubes float", "cats sleep so much", "zebras have stripes", "old books smell nice",
       "computers get slow over time", "owls hoot at night", "dogs wag their tails", "we dream", "bread go stale",
       "we get goosebumps", "planes leave white trails", "bees make honey", "we have fingerprints",
       "the sky look blue", "hiccups happen", "cats knock things off tables", "some people snore",
       "leaves fall off trees", "we need sleep", "fireflies glow", "we feel hungry", "ears pop on planes"]
CHOICES = ["working from home", "living in a big city", "owning a car", "learning online", "renting a flat",
           "getting a dog", "using a credit card", "studying abroad", "working part time", "buying a used phone",
           "electric cars", "reading e-books", "having a big family", "freelancing", "living alone",
           "taking a gap year", "cooking at home", "using public transport", "a four-day work week", "homeschooling"]
PAIRS = [("weather", "climate"), ("a virus", "bacteria"), ("a lake", "a pond"), ("tea", "coffee"),
         ("a crocodile", "an alligator"), ("RAM", "storage"), ("a town", "a city"), ("baking soda", "baking powder"),
         ("a frog", "a toad"), ("a hurricane", "a tornado"), ("speed", "velocity"), ("a poem", "a song"),
         ("jam", "jelly"), ("a rabbit", "a hare"), ("a comet", "an asteroid"), ("a loan", "a grant"),
         ("a resume", "a CV"), ("a violin", "a viola"), ("empathy", "sympathy"), ("an ocean", "a sea")]
OCCASIONS = ["a rainy Sunday afternoon", "a snowy day", "a long train ride", "a family reunion", "a first date",
             "a kid's birthday party", "a quiet evening at home", "a team-building day", "a summer picnic",
             "a weekend with no plans", "a power cut", "a trip to the beach", "a lazy Saturday morning"]
INGREDIENTS = ["eggs, rice and spinach", "pasta and tomatoes", "potatoes and cheese", "chicken and broccoli",
               "beans and tortillas", "bread and avocado", "oats and bananas", "lentils and carrots",
               "tofu and noodles", "mushrooms and garlic", "apples and flour", "fish and lemon"]
PEOPLE = ["a neighbour who watered my plants", "a teacher who helped me", "a friend who lent me a book",
          "my boss after a hard project", "a colleague who is leaving", "my aunt for a birthday gift",
          "a doctor who cared for my father", "a stranger who returned my wallet", "my team after a launch"]
WRITINGS = ["a short thank-you note to", "a polite email to", "a two-line poem for", "a short birthday message for",
            "a kind apology to", "a short invitation for"]
TRIPS = ["a three-day hiking trip", "a week at the beach", "a business trip", "a winter holiday in the mountains",
         "a weekend in Paris", "a camping trip with kids", "a long flight", "a music festival", "a day at the zoo"]
PROCESSES = ["a rainbow forms", "bread rises", "a plane stays in the air", "a bicycle stays upright when it moves",
             "snow forms", "a seed grows into a plant", "a bill becomes a law", "coffee is made",
             "the heart pumps blood", "a refrigerator keeps food cold", "glass is made", "clouds form",
             "a battery stores energy", "paper is recycled", "a caterpillar becomes a butterfly", "cheese is made"]
SKILLS = ["remembering people's names", "cooking", "drawing", "writing emails", "listening", "chess",
          "managing my time", "taking notes", "giving feedback", "saving money", "singing", "speaking up in meetings"]
TEMPLATES = [
    "How do I {task}?", "How can I {task}?", "What is the best way to {task}?", "Give me tips to {task}.",
    "I want to {task}. Where should I start?", "What are common mistakes when people try to {task}?",
    "Explain {concept} to {audience}.", "What is {concept}?", "Explain {concept} in simple words.",
    "How does {concept} work?", "Why do {why}?", "Why does it happen that {why}?",
    "What are the pros and cons of {choice}?", "Is {choice} a good idea?", "Should I consider {choice}?",
    "What is the difference between {a} and {b}?", "Compare {a} and {b}.", "Give me three ideas for {occasion}.",
    "What can I do on {occasion}?", "Suggest some fun things to do on {occasion}.",
    "Suggest a simple dinner I can cook with {ingredients}.", "What can I make with {ingredients}?",
    "Write {writing} {person}.", "What should I pack for {trip}?", "Help me plan {trip}.",
    "Describe how {process}.", "Explain how {process}.", "Can you tell me how {process}?",
    "How can I become better at {skill}?", "How do I get better at {skill}?", "Give me a plan to improve at {skill}.",
    "Tell me a fun fact about {thing}.", "Write a short poem about {thing}.", "Tell me about {concept}.",
    "List five facts about {concept}.", "Summarise what {concept} is in two sentences.",
]
SLOTS = {"task": TASKS, "concept": CONCEPTS, "audience": AUDIENCES, "thing": THINGS, "why": WHY, "choice": CHOICES,
         "occasion": OCCASIONS, "ingredients": INGREDIENTS, "writing": WRITINGS, "person": PEOPLE, "trip": TRIPS,
         "process": PROCESSES, "skill": SKILLS}


PREFIXES = ["", "", "", "", "Quick question: ", "Hi! ", "I'm curious. ", "Please help. ", "Hello, "]
SUFFIXES = ["", "", "", "", " Keep it short.", " Use simple words.", " Explain step by step.", " Give me a list.",
            " Answer in a few sentences.", " Thanks!"]
#: words that say what kind of request it is, not what it is about: ignored when comparing with held-out prompts
STOPWORDS = set("""a an the and or of to for in on at with by is are do does how what why which who can i my me you
your it its be should could would some best way give tell explain describe write short simple words three five
list pros cons difference between suggest make help please quick question hi hello thanks keep answer few
sentences step ideas things get better become good plan start""".split())


def _words(text: str) -> set[str]:
    """The content words of a prompt (lower case, request words dropped)."""
    return set(re.findall(r"[a-z']+", text.lower())) - STOPWORDS


def template_prompts(n: int, held_out: list[str], seed: int = 0, max_overlap: float = 0.5) -> list[str]:
    """Up to ``n`` distinct prompts, none within ``max_overlap`` word-set Jaccard of a ``held_out`` prompt."""
    rng = random.Random(seed)
    held = [_words(p) for p in held_out]
    seen: set[str] = set()
    out: list[str] = []
    for _ in range(n * 50):
        if len(out) >= n:
            break
        template = rng.choice(TEMPLATES)
        a, b = rng.choice(PAIRS)
        values = {k: rng.choice(v) for k, v in SLOTS.items()}
        prompt = template.format(a=a, b=b, **values)
        prompt = rng.choice(PREFIXES) + prompt[0].upper() + prompt[1:] + rng.choice(SUFFIXES)
        if prompt in seen:
            continue
        seen.add(prompt)
        words = _words(prompt)
        if any(len(words & h) / max(1, len(words | h)) > max_overlap for h in held):
            continue
        out.append(prompt)
    return out


if __name__ == "__main__":  # a look at what comes out, and how many distinct prompts there are
    bench = Path(__file__).parents[2] / "benchmarks" / "speculative_prompts.txt"
    held_out = [p.strip() for p in bench.read_text().splitlines() if p.strip()]
    prompts = template_prompts(20000, held_out)
    print(len(prompts))
    for p in random.Random(1).sample(prompts, 15):
        print(" ", p)
