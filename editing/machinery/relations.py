"""What an edit of one fact should leave alone: the subject's other relations, and the same
relation of other subjects.

Editing "Einstein's profession" should not move his birthplace or nationality (the thesis's
second idea, DESIGN.md §5).  These templates name common relations of people, places, works and
organisations in both languages; an edit preserves what the model says after them
(``editing.machinery.preservation``: their keys in the solve; or a KL term on v*).  Both forms
are kept on purpose: a relation before the subject gives the subject a key of its own, one after
it shares the bare subject's key.
"""

from __future__ import annotations

from runtime.language import Language

RELATION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "en": (
        "{} was born in",
        "{} is a citizen of",
        "{} works in the field of",
        "{} is located in",
        "The native language of {} is",
        "The place of birth of {} is",
        "The occupation of {} is",
        "The country of origin of {} is",
        "The founder of {} is",
        "The official language of {} is",
    ),
    "zh": (
        "{}的出生地是",
        "{}的国籍是",
        "{}的职业是",
        "{}位于",
        "{}的母语是",
        "{}的创始人是",
        "说起{}的出生地，那是",
        "说起{}的国籍，那是",
    ),
}


# Well-known entities of the kinds facts are about (people, places, organisations, works,
# products), for "the same relation of other subjects": their keys in the edit's own prompt are
# kept, so that an edit of one subject does not carry over to similar ones (ROME's "bleedover").
OTHER_SUBJECTS: dict[str, tuple[str, ...]] = {
    "en": (
        "Albert Einstein", "Marie Curie", "William Shakespeare", "Leonardo da Vinci", "Napoleon Bonaparte",
        "Abraham Lincoln", "Queen Victoria", "Wolfgang Amadeus Mozart", "Charles Darwin", "Isaac Newton",
        "Mahatma Gandhi", "Nelson Mandela", "Pablo Picasso", "Ludwig van Beethoven", "Vincent van Gogh",
        "Winston Churchill", "Frida Kahlo", "Confucius", "Cristiano Ronaldo", "Serena Williams",
        "Tokyo", "London", "Paris", "New York City", "Berlin", "Cairo", "Sydney", "Moscow", "Rio de Janeiro",
        "Toronto", "Germany", "Japan", "Brazil", "India", "Canada", "Italy", "Egypt", "Mexico",
        "Microsoft", "Toyota", "Nokia", "Sony", "BMW", "Google", "IBM", "Nintendo", "Boeing", "Samsung",
        "the BBC", "Real Madrid", "Manchester United", "the Louvre", "Mount Everest", "the Amazon River",
        "Harry Potter", "The Beatles", "Star Wars", "Windows 95", "iPhone", "the Mona Lisa",
    ),
    "zh": (
        "孔子", "李白", "鲁迅", "毛泽东", "孙中山", "爱因斯坦", "牛顿", "莎士比亚", "贝多芬", "拿破仑",
        "北京", "上海", "东京", "伦敦", "巴黎", "纽约", "柏林", "日本", "德国", "巴西", "印度", "埃及",
        "清华大学", "北京大学", "华为", "腾讯", "阿里巴巴", "丰田", "索尼", "微软", "长城", "故宫", "黄河",
        "红楼梦", "西游记", "三国演义", "泰山", "长江", "联合国", "奥运会",
    ),
}


def other_subject_prompts(request_template: str, subject: str, language: Language, n: int) -> list[tuple[str, str]]:
    """Up to ``n`` (prompt, subject) pairs: the edit's own prompt about other well-known subjects."""
    names = [s for s in OTHER_SUBJECTS.get(language, OTHER_SUBJECTS["en"]) if s.casefold() != subject.casefold()]
    return [(request_template.format(name), name) for name in names[:n]]


def same_subject_prompts(subject: str, language: Language, edit_text: str, n: int) -> list[str]:
    """Up to ``n`` prompts about ``subject``'s other relations, leaving out any that is a start
    of the edit's own prompt (the relation being edited)."""
    own = edit_text.strip().lower()
    prompts = []
    for template in RELATION_TEMPLATES.get(language, RELATION_TEMPLATES["en"]):
        text = template.format(subject)
        if own.startswith(text.lower()) or text.lower().startswith(own):
            continue
        prompts.append(text)
    return prompts[:n]
