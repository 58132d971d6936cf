"""Movie reviews for the controlled-sentiment task (DPO paper Sec. 6.1): synthetic (tiny preset) or IMDb.

The paper fine-tunes GPT-2 on IMDb reviews and asks it to continue their prefixes positively. The
``tiny`` preset replaces IMDb with reviews generated here, offline and seeded, so the whole frontier
runs on a laptop. Each synthetic review has a latent ``rating`` (1-10) that sets its sentences:

- opinions on aspects (acting, plot, score, pacing, ...) with graded adjectives on seven levels,
  awful (-3) ... fine (0) ... masterful (+3); each sentence's level is drawn around the rating's, so
  middling reviews mix praise and complaints;
- intensifiers ("really", "somewhat"), negation ("not bad", "never boring", "not great") and
  contrast ("..., but ...", "Although ..."), the constructions a lexicon-based reward can misread;
- neutral synopsis sentences (generated characters, occupations, places, events) and
  viewing-context sentences ("I saw it with my sister on a wet Sunday"), which carry no opinion;
  no word of theirs is in VADER's lexicon (tested: VADER scores every one of them 0), so neither the learned
  ground truth nor VADER can find sentiment in a plot ("X plays Y" became "X stars as Y": VADER's lexicon
  scores "plays" +1.0);
- an optional closing verdict ("Stay away.", "8/10.").

Ratings are U-shaped like IMDb's; ``label`` is 1 for ratings >= 6. The ground truth, VADER
(``rewards.VaderReward``), rank-correlates with the rating at Spearman ~0.77 on whole reviews
(tested >= 0.7); the rest is what VADER misreads and the sentence-level noise of mixed reviews.

Every source returns ``{"train": [Review, ...], "test": [Review, ...]}``, so the rest of the
pipeline does not know which one it reads.
"""

from __future__ import annotations

import itertools
import random
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Review:
    """One review: its text, its rating (1-10, synthetic only; None for IMDb) and label (1 positive, 0 negative)."""

    text: str
    rating: int | None
    label: int


# ---- data: ratings and opinion words -------------------------------------------------------------
# fmt: off

RATING_WEIGHTS = {1: 14, 2: 9, 3: 9, 4: 9, 5: 7, 6: 7, 7: 9, 8: 11, 9: 10, 10: 15}
"""U-shaped like IMDb's rating histogram: extremes are the most common."""
POSITIVE_RATING = 6
"""Ratings >= 6 are labelled positive."""
SENTENCE_COUNT_WEIGHTS = {2: 10, 3: 15, 4: 18, 5: 18, 6: 15, 7: 12, 8: 12}
LEVEL_SPREAD = 0.8
"""Standard deviation of a sentence's opinion level around its review's (rating 1 -> -3, 10 -> +3)."""

ADJECTIVES = {
    -3: ["awful", "terrible", "dreadful", "atrocious", "abysmal", "unbearable", "horrible", "painful", "pathetic",
         "disastrous", "excruciating", "insufferable"],
    -2: ["bad", "poor", "weak", "dull", "lazy", "tedious", "clumsy", "sloppy", "shallow", "tiresome", "amateurish",
         "lifeless"],
    -1: ["mediocre", "uneven", "forgettable", "bland", "flat", "underwhelming", "disappointing", "middling",
         "uninspired", "lackluster"],
    0: ["fine", "passable", "serviceable", "okay", "adequate", "average", "watchable", "functional"],
    1: ["decent", "solid", "pleasant", "competent", "enjoyable", "respectable", "nice", "fresh"],
    2: ["good", "strong", "engaging", "memorable", "impressive", "effective", "charming", "delightful", "terrific",
        "thoughtful", "polished"],
    3: ["great", "excellent", "brilliant", "wonderful", "superb", "masterful", "outstanding", "extraordinary",
        "magnificent", "fantastic", "amazing", "flawless", "sublime"],
}
INTENSIFIERS = {  # by |level|
    1: ["somewhat", "fairly", "rather", "mostly"],
    2: ["really", "very", "incredibly", "genuinely", "remarkably"],
    3: ["absolutely", "simply", "utterly", "completely", "totally"],
}
NEGATED = {  # a level said by negating its opposite; {it} is "it" or "they"
    -3: ["not worth anyone's time", "not good in any way", "not even remotely watchable"],
    -2: ["not good at all", "not up to much", "not worth the effort"],
    -1: ["not great", "not very good", "nothing special", "not as good as {it} should be"],
    0: ["not bad, but not great either", "neither good nor bad"],
    1: ["not bad", "not half bad", "not bad at all"],
    2: ["never boring", "never dull", "not the disaster I expected"],
    3: ["never less than excellent", "nothing short of brilliant", "never boring and often brilliant",
        "not just good but great"],
}
ASPECTS = {  # aspect -> (is plural, aspect-specific adjectives by level)
    "acting": (False, {-2: ["wooden", "stiff"], 2: ["convincing", "natural"], 3: ["electric", "nuanced"]}),
    "performances": (True, {-2: ["wooden", "stiff"], 2: ["convincing", "natural"], 3: ["heartbreaking"]}),
    "plot": (False, {-3: ["incoherent"], -2: ["predictable", "confusing"], 2: ["gripping", "clever"]}),
    "story": (False, {-2: ["predictable", "thin"], 2: ["gripping", "moving"], 3: ["unforgettable"]}),
    "script": (False, {-3: ["incoherent"], -2: ["lazy", "clichéd"], 2: ["sharp", "clever"], 3: ["whip-smart"]}),
    "dialogue": (False, {-3: ["cringeworthy"], -2: ["clunky", "stilted"], 2: ["witty", "sharp"]}),
    "pacing": (False, {-2: ["sluggish", "glacial"], -1: ["uneven"], 2: ["tight", "brisk"]}),
    "score": (False, {-2: ["grating", "intrusive"], 2: ["haunting", "lovely"], 3: ["soaring"]}),
    "soundtrack": (False, {-2: ["grating", "intrusive"], 2: ["catchy", "lovely"]}),
    "cinematography": (False, {-2: ["murky", "ugly"], 2: ["beautiful", "striking"], 3: ["gorgeous", "stunning"]}),
    "camera work": (False, {-2: ["shaky", "murky"], 2: ["fluid", "elegant"], 3: ["breathtaking"]}),
    "editing": (False, {-2: ["choppy", "sloppy"], 2: ["crisp", "tight"]}),
    "ending": (False, {-3: ["insulting"], -2: ["rushed", "abrupt"], 2: ["satisfying", "moving"]}),
    "final act": (False, {-2: ["rushed", "messy"], 2: ["satisfying", "tense"]}),
    "characters": (True, {-2: ["thin", "annoying"], 2: ["believable", "rich"], 3: ["unforgettable"]}),
    "gags": (True, {-2: ["juvenile", "unfunny"], 2: ["funny", "sly"], 3: ["hilarious"]}),
    "action scenes": (True, {-2: ["choppy", "incomprehensible"], 2: ["thrilling", "exciting"]}),
    "practical effects": (True, {-3: ["laughable"], -2: ["cheap", "dated"], 2: ["seamless", "convincing"]}),
    "production design": (False, {-2: ["cheap", "drab"], 2: ["lavish", "detailed"]}),
    "costumes": (True, {-2: ["cheap", "distracting"], 2: ["lavish", "gorgeous"]}),
    "central relationship": (False, {-2: ["forced", "unconvincing"], 2: ["sweet", "touching"]}),
    "twist": (False, {-3: ["insulting"], -2: ["obvious", "silly"], 2: ["clever", "surprising"]}),
    "opening scene": (False, {-2: ["confusing", "slow"], 2: ["gripping", "striking"]}),
    "rest of the cast": (False, {-2: ["underused", "forgettable"], 2: ["terrific", "lively"]}),
    "chemistry between the leads": (False, {-2: ["lifeless", "awkward"], 2: ["lovely", "believable"]}),
    "sound design": (False, {-2: ["muddy", "distracting"], 2: ["immersive", "inventive"]}),
    "lighting": (False, {-2: ["flat", "garish"], 2: ["moody", "elegant"]}),
    "makeup": (False, {-2: ["obvious", "cheap"], 2: ["convincing", "seamless"]}),
    "narration": (False, {-2: ["intrusive", "smug"], 2: ["wry", "warm"]}),
    "flashbacks": (True, {-2: ["confusing", "clumsy"], 2: ["elegant", "revealing"]}),
    "subplot about the neighbors": (False, {-2: ["pointless", "distracting"], 2: ["touching", "funny"]}),
    "stunt work": (False, {-2: ["sloppy", "choppy"], 2: ["inventive", "crisp"]}),
    "child actors": (True, {-2: ["grating", "stiff"], 2: ["natural", "believable"]}),
    "visual effects": (True, {-2: ["rubbery", "dated"], 2: ["seamless", "stunning"]}),
    "tone": (False, {-2: ["all over the place", "smug"], 2: ["assured", "warm"]}),
    "running time": (False, {-2: ["bloated", "punishing"], 2: ["just right", "brisk"]}),
    "adaptation of the book": (False, {-2: ["clumsy", "shallow"], 2: ["faithful", "thoughtful"]}),
}
DIRECTION = {-2: ["listless", "heavy-handed"], 2: ["assured", "confident"], 3: ["inspired", "masterful"]}
"""Adjectives for "{director}'s direction is ...", the one sentence about the director."""
FEELINGS = {  # "I {feeling} this movie."
    -3: ["hated", "could not stand", "despised", "regretted watching"],
    -2: ["did not enjoy", "disliked", "was bored by", "struggled to finish"],
    -1: ["was let down by", "wanted to like", "was disappointed by"],
    0: ["had mixed feelings about", "neither loved nor hated"],
    1: ["liked", "mostly enjoyed", "had a decent time with", "warmed to"],
    2: ["really enjoyed", "had a great time with", "was pleasantly surprised by"],
    3: ["loved", "adored", "was blown away by", "fell in love with"],
}
REACTIONS = {  # whole sentences
    -3: ["I was bored out of my mind.", "I walked out after an hour.",
         "This is one of the worst films I have ever seen.", "I have never wanted a movie to end so badly.",
         "Everyone involved should be embarrassed.", "Half the audience left before the credits, and I envied them."],
    -2: ["I nearly fell asleep halfway through.", "Most of it left me cold.", "I kept checking my watch.",
         "It is a chore to sit through.", "Whole scenes exist only to fill time."],
    -1: ["It never quite comes together.", "It is watchable, but only just.", "I expected a lot more.",
         "It is a missed opportunity.", "Somewhere in here is a better movie."],
    0: ["It passes the time.", "It is neither as good nor as bad as people say.",
        "I will probably forget it by next week.", "It is fine for what it is.", "Your mileage may vary."],
    1: ["It is a pleasant enough way to spend two hours.", "It won me over in the end.", "I smiled more than once.",
        "There is more to it than the trailer suggests.", "It grows on you."],
    2: ["I laughed more than I expected to.", "It kept me hooked until the very end.",
        "I would happily watch it again.", "It is a real treat.", "The two hours flew by."],
    3: ["I was in tears by the end.", "It stayed with me for days.",
        "This is one of the best films I have seen in years.", "I loved every minute of it.",
        "It is a joy from start to finish.", "The whole theater applauded, and rightly so."],
}
VERDICTS = {  # closing line, by rating
    1: ["Avoid at all costs.", "Stay away.", "A complete waste of time.",
        "Two hours of my life I will never get back."],
    3: ["Hard to recommend.", "I cannot recommend it.", "There are better ways to spend an evening.", "Skip it."],
    5: ["Worth a rental if you like the genre.", "Watch it once and move on.", "Fine for a lazy afternoon, no more."],
    7: ["Recommended.", "Well worth your time.", "Worth seeing on the big screen.", "Give it a chance."],
    9: ["Highly recommended.", "A must-see.", "Do not miss it.", "See it as soon as you can."],
}
OPINION_KINDS = {"aspect": 30, "negation": 12, "contrast": 14, "overall": 10, "feeling": 10, "reaction": 12,
                 "actor": 6, "director": 6}
"""How often each kind of opinion sentence is written (relative weights)."""
ONCE_PER_REVIEW = {"overall", "feeling", "reaction", "actor", "director"}
RATING_VERDICTS = ["{r}/10.", "My rating: {r} out of 10.", "I would give it {r} out of 10."]

# ---- data: the neutral world of synopses and viewing contexts (kept free of VADER's lexicon words) -------

FEMALE_NAMES = """Maria Anna Clara Elena Sofia Nora Ruth Julia Alice Helen Rosa Ingrid Marta Lucy Hannah Mei
Aiko Priya Amara Leila Fatima Olga Irene Vera Sara Nadia Greta Agnes Maya Zoe Esther Camille Rita Beatrix Joan
Harriet Frances Tamsin Yara Dolores Edith Margot Lena Ada Imogen Pilar Chiara Noor Keiko Ayesha Freya Wanda
Lorna Sylvie Daphne Bridget Carmen Delphine Eleanor Fiona Gwen Hilde Isabel Jolene Katya Lucia Mirela Nell
Ophelia Paloma Renata Signe Thea Ursula Valentina Winifred Ximena Yvonne Zofia Astrid Birgit Celeste Dagny
Elif Florence Gemma Hortense Ines Juno Kamala Annika Bernadette Cosima Dorothea Evangeline Fenella Georgina
Henrietta Isolde Jacqueline Kirsten Ludmila Magdalena Natasha Orla Petra Rosalind Saoirse Theodora Una
Veronika Wilhelmina Adele Benedetta Consuelo Dervla Estelle""".split()
MALE_NAMES = """Jack Tom Daniel Samuel Oscar Victor Hugo Martin Leo Felix Walter Ivan Pedro Kenji Ravi Omar
Tariq Ezra Stefan Lars Anton Pablo Marco Luca Felipe Carlos Jonah Caleb Silas Elliot Arthur Desmond Gus Harvey
Emil Rafael Nikolai Theo Mateo Abel Bruno Cyril Dmitri Farid Gideon Hector Isaac Jasper Kofi Lionel Milo
Nestor Otis Quentin Rupert Yusuf Alonso Bertram Cormac Dario Edmund Fergus Gregor Horace Idris Joaquin Kasimir
Lorcan Magnus Nils Orson Percival Roman Sebastian Tobias Ulrich Vikram Wendell Xavier Yannick Zoltan Ambrose
Boris Conrad Dashiell Emeka Florian Gaspard Anselm Barnaby Cassius Dominic Evander Fabian Gulliver Hamish
Ignatius Jeremiah Killian Leopold Malachy Norbert Octavian Peregrine Ramon Severin Thaddeus Urban Valentin
Wolfgang Augustin Benedikt Cornelius Deniz Erasmus""".split()
SURNAMES = """Delgado Brennan Okafor Lindqvist Moreau Hartley Castellano Novak Whitaker Fischer Ramirez Sato
Kowalski Abernathy Petrov Mendes Gallagher Haddad Eriksen Costa Blackwood Nakamura Dubois Shapiro Quinn Varga
Achebe Lund Ferreira Holloway Kaplan Marchetti Osei Pryce Rosen Sorensen Tanaka Ueda Vance Wojcik Yilmaz
Zamora Albright Bianchi Carver Dunmore Esposito Faulkner Greer Ibarra Jensen Keller Lachance Mbeki Nilsen
Orlov Paredes Rinaldi Steiner Thorne Underwood Voss Weller Castillo Donovan Ashdown Bergman Chandra Duval
Emerson Fontaine Gutierrez Halvorsen Iwata Jovanovic Kerrigan Lockhart Mancini Nyberg Oyelaran Pemberton
Quintero Radcliffe Szabo Trujillo Ulrich Valdez Wexler Yamada Zielinski Ambrose Barlow Cardenas Dawes
Ellingham Farrow Gillespie Hargreaves Inglis Janssen Kovacs Lemaire Morrissey Nkemelu Ostrowski Pellegrini
Rasmussen Sokolov Tremblay Vasquez Whitlock Yardley Zubiri Bellamy Courtenay Drummond Etxeberria Fairbanks
Grimaldi Hollis Ivanova Kettering Laszlo Montague Neville Ortega Pasternak Rourke Salazar Tolliver Acheson
Brannigan Cavendish Delacroix Eastwood Fitzroy Grunwald Hendricks Isaksen Jankowski Krueger Lindgren Mahoney
Nakashima Oduya Prescott Quayle Renshaw Sandoval Takahashi Urquhart Vidal Wainwright Youssef Zeller""".split()
CITIES = """Baltimore Lisbon Glasgow Osaka Duluth Marseille Nairobi Tucson Krakow Naples Dublin Montreal
Reykjavik Havana Tangier Bergen Detroit Valparaiso Galway Trieste Memphis Antwerp Cork Seville Tbilisi Hobart
Manila Oaxaca Winnipeg Bristol Lagos Istanbul Helsinki Cleveland Saigon Porto Budapest Buffalo Genoa Belfast
Pittsburgh Gdansk Rotterdam Hamburg Bilbao Cincinnati Halifax Adelaide Dakar Kyoto Sapporo Bordeaux Edinburgh
Liverpool Tallinn Riga Vilnius Zagreb Sarajevo Palermo Marrakesh Anchorage Boise Omaha Savannah Chattanooga
Tulsa Spokane Fresno Lyon Turin Bologna Bruges Salzburg Innsbruck Lausanne Quebec Calgary Brisbane Auckland
Wellington Mumbai Jaipur Colombo Hanoi Busan Shanghai Tehran Beirut Amman Cairo Accra Kampala Lusaka Asmara
Lima Quito Bogota Montevideo Asuncion Bremen Leipzig Dresden Graz Ljubljana Odessa Minsk Tampere Uppsala
Aarhus Malmo Aberdeen Swansea Cardiff Limerick Galveston Albuquerque Sacramento Milwaukee Louisville Richmond
Saskatoon Juneau Honolulu Darwin Perth""".split()
CITIES += ["New Orleans", "Cape Town", "Buenos Aires", "Mexico City", "Rio de Janeiro"]
SMALL_PLACES = [
    "a fishing village in Maine", "a mining town in Wales", "a sleepy suburb of Phoenix",
    "a farming community in Iowa", "a ski resort in the Alps", "a housing estate in Leeds", "a border town in Texas",
    "an island off the coast of Norway", "a mountain village in Andalusia", "a desert town in Nevada",
    "a seaside town in Cornwall",
    "a logging camp in Oregon", "a mill town in Lancashire", "a vineyard in Burgundy", "a trailer park in Florida",
]
ERAS = ["the 1950s", "the 1970s", "the summer of 1989", "the winter of 1944", "the near future", "the 1920s",
        "the last days of disco", "the late 1960s", "the present day", "the early 1990s", "the autumn of 1962",
        "the year 2049", "the gold rush", "the age of sail"]
OCCUPATIONS = [
    "nurse", "accountant", "trawler captain", "schoolteacher", "detective", "pastry chef", "taxi driver", "librarian",
    "stockbroker", "veterinarian", "locksmith", "wedding photographer", "ferry captain", "radio host", "mechanic",
    "midwife", "lighthouse keeper", "piano tuner", "hotel concierge", "beekeeper", "night guard", "tax inspector",
    "cellist", "journalist", "surgeon", "welder", "translator", "archaeologist", "short-order cook", "insurance agent",
    "boxing coach", "florist", "architect", "shepherd", "chess prodigy", "retired spy", "stage magician",
    "court stenographer", "tattoo artist", "bus driver", "park ranger", "tailor", "pawnbroker", "jazz drummer",
    "unpublished novelist", "small-time forger", "high school principal", "police sergeant", "marine biologist",
    "bartender", "cartographer", "glassblower", "air traffic controller", "dog groomer", "organist", "plumber",
    "astronomer", "ballet instructor", "real estate agent", "crossword setter", "ship's cook", "typesetter",
    "blacksmith", "sommelier", "clockmaker", "undertaker", "ventriloquist", "zookeeper", "auctioneer", "chauffeur",
    "botanist", "puppeteer", "geologist", "carpenter", "pharmacist", "lifeguard", "janitor", "falconer",
    "stonemason", "dentist", "firefighter", "cobbler", "usher", "locomotive engineer", "hairdresser", "saxophonist",
    "meteorologist", "bookbinder", "harbor pilot", "cheesemaker", "customs officer", "stunt performer",
    "landscape painter",
]
GENRES = [
    "suspense film", "drama", "western", "mystery", "family drama", "science fiction film", "heist movie", "road movie",
    "period piece", "coming-of-age story", "musical", "courtroom drama", "sports drama", "espionage film",
    "satire", "biopic", "detective story", "melodrama", "caper", "fantasy film", "political drama",
    "submarine picture", "chamber piece", "mockumentary", "swashbuckler", "noir", "dance film", "courtroom procedural",
]
RELATIONS = [
    "landlord", "business partner", "childhood rival", "next-door neighbor", "stepson", "mentor", "godmother",
    "parole officer", "former teacher", "older cousin", "driving instructor", "brother-in-law", "ex-fiancé",
]
EVENTS = [  # "{name}, a nurse in Lisbon who {event}"; {subj}/{obj}/{pos} are the character's pronouns
    "inherits a crumbling hotel on the coast", "discovers a stranger living in {pos} attic",
    "is paid to deliver a package across the border", "is hired to track down a runaway teenager",
    "tries to reconnect with {pos} estranged daughter", "coaches a team of misfits for the regional tournament",
    "finds a stack of old letters under the floorboards", "spends a winter at a cabin in the mountains",
    "witnesses something unusual on the night train", "returns home to sell {pos} father's house",
    "becomes fixated on a decades-old disappearance", "plans one last job before retirement",
    "moves in next door to {pos} former teacher", "wakes up unable to remember the previous week",
    "starts receiving postcards from a classmate who vanished years ago", "buys a racehorse nobody else wants",
    "takes a job at a remote weather station", "is asked to testify against {pos} own brother",
    "enters a baking contest to keep the family bakery open", "goes on a road trip with {pos} grumpy grandfather",
    "opens a restaurant in a town that has never had one", "swaps lives with a famous singer for a week",
    "takes home a dog that seems to understand every word", "takes in a runaway who knows too much",
    "has to look after {pos} sister's twins for a summer", "finds a suitcase of cash and tells nobody",
    "joins a traveling circus to get away from home", "washes up on an island after a shipwreck",
    "runs for mayor on a dare", "teaches chess at a state penitentiary",
    "investigates a series of fires at the docks", "reopens an old cinema with {pos} neighbors",
    "learns that {subj} has a half-brother in another country", "gets locked in an elevator with {pos} former boss",
    "walks the length of the country for a bet", "writes speeches for a local politician",
    "forges a painting for a mysterious collector", "goes undercover in a commune in the desert",
    "builds a boat in {pos} back yard", "tracks a wolf across three counties", "inherits a parrot that speaks Latin",
    "sails single-handed from Lisbon to Brazil", "runs a pirate radio station from a barge", "digs up a time capsule",
    "rebuilds vintage motorcycles in a converted barn", "collects folk songs in remote valleys",
    "drives an ice cream van through the suburbs", "trains for a marathon at the age of seventy",
    "tutors the son of a senator", "searches for a rare orchid in the rainforest",
    "rebuilds a piano note by note", "maps the tunnels beneath the old quarter", "hosts a quiz night at a pub",
    "discovers a second family in {pos} late father's diary", "follows a carnival from town to town",
    "translates the memoirs of a reclusive poet", "ferries tourists across a glacial lake",
    "stages a production of Hamlet with factory workers", "sells encyclopedias door to door",
    "manages a tiny amateur football club", "refurbishes a lighthouse for a billionaire",
    "photographs weddings in a town where nobody marries", "climbs every mountain in Scotland",
    "chases a counterfeit violin across Europe", "carries seeds across a closed border",
    "repairs typewriters in a shop that never has customers", "guards a bridge nobody uses",
    "drives a hearse across the prairie for a stranger", "raises pigeons on a rooftop in the old harbor",
    "volunteers at a hospice run by nuns", "teaches a parrot to recite poetry", "counts birds on a windswept island",
    "coaches a debate team from the other side of the tracks", "delivers mail by canoe in the bayou",
    "catalogs the belongings of a late magician", "paints murals on disused warehouses",
    "sings in the chorus of a provincial opera house", "builds scale models of vanished railway stations",
    "tunes church bells across the countryside", "ghostwrites the autobiography of a wrestler",
    "sets out to photograph every lighthouse on the coast", "runs a laundromat that doubles as a casino",
    "breeds tortoises for a royal zoo", "rows across the Atlantic in a homemade boat",
]
COMPLICATIONS = [
    "a stranger arrives in town", "{pos} younger brother vanishes", "the family business goes under",
    "a storm closes the only road out of town", "{pos} business partner vanishes", "the local mine closes",
    "an old flame turns up at the door", "a body washes up on the beach", "the money runs out",
    "{pos} past catches up with {obj}", "a letter arrives from an old address in {city}", "the river floods",
    "a developer buys up the neighborhood", "{pos} mother moves in", "the wedding is called off",
    "a film crew comes to town", "the factory changes hands", "a circus sets up on the village green",
    "a telegram arrives from overseas", "the lease on the shop expires",
]
GOALS = [
    "has to decide how far {subj} is willing to go", "sets out to find out what happened",
    "teams up with an unlikely partner", "must face the people {subj} left behind",
    "starts asking questions nobody wants answered", "takes things into {pos} own hands",
    "hatches a plan that falls apart at every step", "goes back to the town {subj} swore never to see again",
    "has one week to put things right", "quietly starts keeping a notebook of everything {subj} sees",
    "hires a lawyer who has never been to court",
]
COMPANIONS = [
    "my sister", "my brother", "my dad", "my mother", "my wife", "my husband", "my girlfriend", "my boyfriend",
    "a couple of classmates", "my roommate", "my kids", "my grandmother", "two coworkers", "my book club",
    "my cousin {first}", "my neighbor {first}", "my uncle", "my teenage son", "my daughter", "my in-laws",
    "my film class", "my stepfather", "my aunt {first}", "my flatmate {first}",
]
OCCASIONS = [
    "on a wet Sunday", "on a Friday night", "on a long flight to {city}", "during a snowed-in weekend",
    "on a slow Tuesday afternoon", "on New Year's Eve", "on my birthday", "late one night", "over Christmas",
    "last weekend", "during a heat wave", "after a long week at work", "while on vacation in {city}",
    "on a Thanksgiving weekend", "the night before an exam",
    "on a wet Monday in November",
]
VENUES = [
    "at a half-full multiplex", "at the local art house", "at a retrospective in {city}",
    "at a drive-in outside {city}", "on cable", "on a streaming service", "on an old DVD from the library",
    "on a tiny laptop screen", "at a packed opening-night screening", "on a hotel television",
    "on a scratched videotape", "at a community hall", "in a university auditorium",
]
REASONS = [
    "the cover caught my eye", "a coworker kept talking about it", "I had seen the director's last film",
    "nothing else was on", "I had seen the trailer",
    "I had read about it in the newspaper", "it was filmed near where I grew up",
    "my cousin appears as an extra", "the poster reminded me of an old paperback",
]
CONTEXTS = [
    "I saw it with {companion} {occasion}.", "I watched this {occasion} with {companion}.",
    "{Companion} talked me into seeing it {venue}.", "I rented it {occasion} because {reason}.",
    "I caught it {venue} {occasion}.", "I went in knowing nothing about it.",
    "I had been waiting for this one since the first trailer.", "I read the book years ago.",
    "I caught a midnight screening with {companion}.", "I do not usually watch {genres}, but {companion} insisted.",
    "I watched it {venue} because {reason}.", "I picked up the DVD for two dollars at a yard sale.",
]
# fmt: on


# ---- generation ------------------------------------------------------------------------------------


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _plural(noun: str) -> str:
    return noun[:-1] + "ies" if noun.endswith("y") else noun + "s"


class _Writer:
    """Writes one review of a given rating; holds its random state, its characters and the aspects used."""

    def __init__(self, rng: random.Random, rating: int):
        self.rng, self.rating = rng, rating
        self.mean_level = (rating - 5.5) / 1.5  # rating 1 -> -3, rating 10 -> +3
        self.genre = rng.choice(GENRES)
        self.hero = self.person()
        self.aspects = rng.sample(list(ASPECTS), 14)  # up to 7 opinions, 2 aspects each
        self.used: set[str] = set()

    def person(self) -> dict:
        """A character: first and full name, gender, pronouns ({subj} {obj} {pos} in the templates)."""
        female = self.rng.random() < 0.5
        first = self.rng.choice(FEMALE_NAMES if female else MALE_NAMES)
        pronouns = {"subj": "she", "obj": "her", "pos": "her"} if female else {"subj": "he", "obj": "him", "pos": "his"}
        return {"first": first, "full": f"{first} {self.rng.choice(SURNAMES)}", "female": female, **pronouns}

    def fill(self, template: str, person: dict) -> str:
        return template.format(city=self.rng.choice(CITIES), **person)

    def level(self) -> int:
        """A sentence's opinion level in -3..3, drawn around the review's: middling reviews mix both signs."""
        return max(-3, min(3, round(self.rng.gauss(self.mean_level, LEVEL_SPREAD))))

    def graded(self, level: int, specific_by_level: dict[int, list[str]] | None = None) -> str:
        """An adjective of this level, sometimes a specific one (an aspect's), sometimes with an intensifier."""
        specific = (specific_by_level or {}).get(level, [])
        adjective = self.rng.choice(specific if specific and self.rng.random() < 0.4 else ADJECTIVES[level])
        if level != 0 and self.rng.random() < 0.4:
            return f"{self.rng.choice(INTENSIFIERS[abs(level)])} {adjective}"
        return adjective

    def synopsis(self, count: int) -> list[str]:
        rng, hero = self.rng, self.hero
        place = rng.choice(CITIES + SMALL_PLACES)
        hero_event, other_event = rng.sample(EVENTS, 2)
        hero_job, other_job = rng.sample(OCCUPATIONS, 2)
        job, event = _article(hero_job), self.fill(hero_event, hero)
        first = rng.choice(
            [
                f"The story follows {hero['full']}, {job} in {place} who {event}.",
                f"{hero['full']}, {job} from {place}, {event}.",
                f"Set in {place} in {rng.choice(ERAS)}, this {self.genre} follows {hero['full']}, {job} who {event}.",
                f"{self.actor()} stars as {hero['full']}, {job} who {event}.",
            ]
        )
        other, other_job = self.person(), _article(other_job)
        trouble, goal = self.fill(rng.choice(COMPLICATIONS), hero), self.fill(rng.choice(GOALS), hero)
        second = rng.choice(
            [
                f"When {trouble}, {hero['first']} {goal}.",
                f"Things get complicated when {trouble}.",
                f"Along the way {hero['subj']} meets {other['full']}, {other_job} who {self.fill(other_event, other)}.",
                f"{hero['first']}'s {rng.choice(RELATIONS)}, {other['full']}, {self.fill(other_event, other)}.",
            ]
        )
        return [first, second][:count]

    def actor(self) -> str:
        """The hero's actor, of the hero's gender; the same name every time it is asked for."""
        if "actor" not in self.hero:
            same_gender = FEMALE_NAMES if self.hero["female"] else MALE_NAMES
            first = self.rng.choice([name for name in same_gender if name != self.hero["first"]])
            self.hero["actor"] = f"{first} {self.rng.choice(SURNAMES)}"
        return self.hero["actor"]

    def context(self) -> str:
        rng = self.rng
        friend = {"first": rng.choice(FEMALE_NAMES + MALE_NAMES)}
        companion = rng.choice(COMPANIONS).format(**friend)
        return rng.choice(CONTEXTS).format(
            companion=companion,
            Companion=companion[0].upper() + companion[1:],
            occasion=self.fill(rng.choice(OCCASIONS), {}),
            venue=self.fill(rng.choice(VENUES), {}),
            reason=rng.choice(REASONS),
            genres=_plural(self.genre),
        )

    def once(self, form: str, fallback: str) -> str:
        """``form`` unless this review already used it, else ``fallback``: no review repeats a set phrase."""
        form = fallback if form in self.used else form
        self.used.add(form)
        return form

    def opinion(self, has_hero: bool) -> str:
        """One opinion sentence about an aspect, the film or the people who made it, at a drawn level."""
        rng, level, aspect = self.rng, self.level(), self.aspects.pop()
        be, was, it = ("are", "were", "they") if ASPECTS[aspect][0] else ("is", "was", "it")
        kind = rng.choices(list(OPINION_KINDS), list(OPINION_KINDS.values()))[0]
        if kind in ONCE_PER_REVIEW:
            kind = self.once(kind, "aspect") if has_hero or kind != "actor" else "aspect"
        if kind == "aspect":
            adjective = self.graded(level, ASPECTS[aspect][1])
            form = rng.choice(["the", "I found", "As for", "I thought"])
            return {
                "the": f"The {aspect} {be} {adjective}.",
                "I found": f"I found the {aspect} {adjective}.",
                "As for": f"As for the {aspect}, {it} {be} {adjective}.",
                "I thought": f"I thought the {aspect} {was} {adjective}.",
            }[self.once(form, "the") if form == "As for" else form]
        if kind == "negation":
            return f"The {aspect} {be} {rng.choice(NEGATED[level]).format(it=it)}."
        if kind == "contrast":
            sign = (level > 0) - (level < 0) or rng.choice([1, -1])
            concession = -sign * rng.choice([1, 2])  # the clause the review concedes has the opposite sign
            conceded = f"the {aspect} {be} {self.graded(concession, ASPECTS[aspect][1])}"
            other = self.aspects.pop()
            main = f"the {other} {'are' if ASPECTS[other][0] else 'is'} {self.graded(level, ASPECTS[other][1])}"
            form = rng.choice(["but", "although", "overall", "has its"])
            form = self.once(form, "but") if form in ("overall", "has its") else form
            return {
                "but": f"{conceded}, but {main}.",
                "although": f"Although {conceded}, {main}.",
                "overall": f"{conceded}, but overall it is {_article(self.graded(level))} film.",
                "has its": f"It has its {'flaws' if level > 0 else 'moments'}, but {main}.",
            }[form]
        if kind == "overall":
            return rng.choice(
                [
                    f"Overall, it is {_article(self.graded(level))} film.",
                    f"All in all, {_article(self.graded(level))} {self.genre}.",
                ]
            )
        if kind == "feeling":
            return f"I {rng.choice(FEELINGS[level])} this {rng.choice(['movie', 'film'])}."
        if kind == "reaction":
            return rng.choice(REACTIONS[level])
        if kind == "actor":
            return f"{self.actor()} is {self.graded(level, ASPECTS['acting'][1])} as {self.hero['first']}."
        return f"{self.person()['full']}'s direction is {self.graded(level, DIRECTION)}."

    def verdict(self) -> str:
        if self.rng.random() < 0.25:
            return self.rng.choice(RATING_VERDICTS).format(r=self.rating)
        return self.rng.choice(VERDICTS[self.rating - (self.rating + 1) % 2])  # 1,2 -> 1; 3,4 -> 3; ...

    def review(self) -> list[str]:
        """2-8 sentences: [context] [synopsis x 0-2] opinions x >= 1 [verdict], an opinion sometimes first."""
        rng = self.rng
        count = rng.choices(list(SENTENCE_COUNT_WEIGHTS), list(SENTENCE_COUNT_WEIGHTS.values()))[0]
        has_context = count >= 3 and rng.random() < 0.35
        num_synopsis = min(rng.choice([0, 1, 1, 2]), count - 1 - has_context)
        has_verdict = count - has_context - num_synopsis >= 2 and rng.random() < 0.5
        num_opinions = count - has_context - num_synopsis - has_verdict
        head = ([self.context()] if has_context else []) + (self.synopsis(num_synopsis) if num_synopsis else [])
        opening = [self.opinion(has_hero=False)] if head and rng.random() < 0.3 else []  # before the hero appears
        opinions = [self.opinion(has_hero=num_synopsis > 0) for _ in range(num_opinions - len(opening))]
        return opening + head + opinions + ([self.verdict()] if has_verdict else [])


def _review_stream(seed: int):
    rng = random.Random(seed)
    ratings, weights = list(RATING_WEIGHTS), list(RATING_WEIGHTS.values())
    while True:
        rating = rng.choices(ratings, weights)[0]
        sentences = _Writer(rng, rating).review()
        yield Review(" ".join(s[0].upper() + s[1:] for s in sentences), rating, int(rating >= POSITIVE_RATING))


def synthetic_reviews(n: int, seed: int) -> list[Review]:
    """``n`` synthetic reviews, the same for the same ``seed`` (a private ``random.Random(seed)``)."""
    return list(itertools.islice(_review_stream(seed), n))


def synthetic_corpus(num_train: int = 20_000, num_test: int = 5_000, seed: int = 0) -> dict[str, list[Review]]:
    """Train and test splits from disjoint seeds (``2 * seed`` and ``2 * seed + 1``).

    Short reviews can repeat by chance, so test reviews whose text is in train are skipped: no test
    prompt is a training text.
    """
    train = synthetic_reviews(num_train, 2 * seed)
    train_texts = {review.text for review in train}
    unseen = (review for review in _review_stream(2 * seed + 1) if review.text not in train_texts)
    return {"train": train, "test": list(itertools.islice(unseen, num_test))}


def imdb_corpus(path_or_name: str = "stanfordnlp/imdb") -> dict[str, list[Review]]:
    """IMDb's train and test splits as reviews (rating None; label 1 positive, 0 negative).

    ``path_or_name`` is a directory written by ``DatasetDict.save_to_disk`` or a dataset on the Hub
    (``datasets.load_dataset``); either needs "train" and "test" splits with "text" and "label"
    columns. HTML line breaks (``<br />``) become spaces.
    """
    import datasets

    if Path(path_or_name).is_dir():
        dataset = datasets.load_from_disk(path_or_name)
    else:
        dataset = datasets.load_dataset(path_or_name)
    corpus = {}
    for split in ("train", "test"):
        if split not in dataset or not {"text", "label"} <= set(dataset[split].column_names):
            raise ValueError(f"{path_or_name}: needs splits 'train' and 'test' with columns 'text' and 'label'")
        columns = dataset[split].to_dict()
        for row, label in enumerate(columns["label"]):
            if label not in (0, 1):
                where = f"{path_or_name}, split {split!r}, row {row}, field 'label'"
                raise ValueError(f"{where}: {label!r}; expected 0 (negative) or 1 (positive)")
        corpus[split] = [
            Review(re.sub(r"\s+", " ", re.sub(r"<br\s*/?>", " ", text)).strip(), None, label)
            for text, label in zip(columns["text"], columns["label"], strict=True)
        ]
    return corpus
