"""The categories of the C-Eval and CMMLU subjects, as each benchmark's authors group them for reporting.

C-Eval (its repository's subject_mapping.json): every subject is in one of STEM, Social Science, Humanities,
Other. CMMLU (its repository's categories.py): every subject is in one of STEM, Humanities, Social Science,
Other, and the China-specific subjects are also counted in "China specific". A subject these tables do not
know (a user's own file in the same layout) is in "Other".
"""
from __future__ import annotations

_CEVAL = {
    "STEM": "computer_network operating_system computer_architecture college_programming college_physics "
            "college_chemistry advanced_mathematics probability_and_statistics discrete_mathematics "
            "electrical_engineer metrology_engineer high_school_mathematics high_school_physics "
            "high_school_chemistry high_school_biology middle_school_mathematics middle_school_biology "
            "middle_school_physics middle_school_chemistry veterinary_medicine",
    "Social Science": "college_economics business_administration marxism mao_zedong_thought education_science "
                      "teacher_qualification high_school_politics high_school_geography middle_school_politics "
                      "middle_school_geography",
    "Humanities": "modern_chinese_history ideological_and_moral_cultivation logic law chinese_language_and_literature "
                  "art_studies professional_tour_guide legal_professional high_school_chinese high_school_history "
                  "middle_school_history",
    "Other": "civil_servant sports_science plant_protection basic_medicine clinical_medicine urban_and_rural_planner "
             "accountant fire_engineer environmental_impact_assessment_engineer tax_accountant physician",
}

_CMMLU = {
    "STEM": "anatomy astronomy college_actuarial_science college_engineering_hydrology college_mathematics "
            "college_medical_statistics computer_science conceptual_physics electrical_engineering "
            "elementary_mathematics genetics high_school_biology high_school_chemistry high_school_mathematics "
            "high_school_physics machine_learning virology",
    "Humanities": "arts chinese_history chinese_literature college_law global_facts international_law jurisprudence "
                  "logical marxist_theory philosophy professional_law world_history world_religions",
    "Social Science": "ancient_chinese business_ethics chinese_civil_service_exam chinese_food_culture "
                      "chinese_foreign_policy chinese_teacher_qualification college_education economics education "
                      "elementary_chinese ethnology high_school_geography high_school_politics journalism "
                      "management marketing modern_chinese professional_accounting professional_psychology "
                      "public_relations security_study sociology",
    "Other": "agronomy chinese_driving_rule clinical_knowledge college_medicine computer_security "
             "construction_project_management elementary_commonsense elementary_information_and_technology "
             "food_science human_sexuality legal_and_moral_basis nutrition professional_medicine sports_science "
             "traditional_chinese_medicine",
    "China specific": "ancient_chinese chinese_civil_service_exam chinese_driving_rule chinese_food_culture "
                      "chinese_foreign_policy chinese_history chinese_literature chinese_teacher_qualification "
                      "construction_project_management elementary_chinese elementary_commonsense ethnology "
                      "high_school_politics modern_chinese traditional_chinese_medicine",
}

CATEGORY_ORDER = {"ceval": tuple(_CEVAL), "cmmlu": tuple(_CMMLU)}
_TABLES = {"ceval": _CEVAL, "cmmlu": _CMMLU}


def categories(benchmark: str, subject: str) -> list[str]:
    """The categories a subject's questions count in (CMMLU: its main one and possibly "China specific")."""
    found = [cat for cat, names in _TABLES[benchmark].items() if subject in names.split()]
    return found or ["Other"]


def known_subjects(benchmark: str) -> set[str]:
    return {name for cat, names in _TABLES[benchmark].items() if cat != "China specific" for name in names.split()}
