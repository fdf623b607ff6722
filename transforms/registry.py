"""The one registry of the eight data areas (DESIGN.md, principle 1).

Everything that differs between areas is data here: the extraction query, the record fields with
the regulation paragraph that requires each, the payload element names, the required-when
conditions, the phase-in date (§ 50) and the delivery channels (§§ 6, 12, 17, 22, 28, 51).
The mapping, the pandera contract, the GE suites, the XSD, the docs and the tests read it; a new
field is one line here.

No Airflow import: this module is plain Python.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SQL_DIR = REPO_ROOT / "sql"
REFERENCE_DIR = REPO_ROOT / "reference"
SCHEMA_DIR = REPO_ROOT / "schemas"

#: Field kinds. Each kind has one format rule (transforms.identifiers) and one XSD simple type.
KINDS = (
    "cpr",  # CPR number, 10 digits (DOMAIN.md)
    "cpr_list",  # several CPR numbers (mentor support per slot, § 37)
    "municipality",  # kommunekode, 3 digits
    "jobcentre",  # 5 digits: kommunekode + 2-digit sub-unit
    "cvr",  # 8 digits, modulus 11
    "pnr",  # P-number, 10 digits, format only
    "se",  # SE number, 8 digits
    "key",  # a source system's key (text, <= 64)
    "date",
    "hours",  # decimal hours, within the field's `bounds`
    "count",  # integer, within the field's `bounds`
    "text",  # free text (<= 200)
    "code",  # a value from a code list in reference/
    "bool",
)

#: Kinds that carry a number and so a range (`Field.bounds`).
NUMBER_KINDS = ("hours", "count")

WEBSERVICE = "webservice"


@dataclass(frozen=True)
class Bounds:
    """The values a count or amount field can take, as the regulation's meaning gives them.

    `low` and `high` are inclusive; `high=None` is "no upper limit". The contract (pandera) and the
    data-quality suite (Great Expectations) both check a field against these bounds, so the two
    layers cannot disagree; `why` says where the bounds come from (shown in docs/fields.md).
    """

    low: float
    high: float | None
    why: str

    def contains(self, value: float) -> bool:
        return value >= self.low and (self.high is None or value <= self.high)

    def text(self) -> str:
        """The range in words: "at least 1", "between 0.5 and 60"."""
        if self.high is None:
            return f"at least {self.low:g}"
        return f"between {self.low:g} and {self.high:g}"


#: Average hours per week of a measure or grant: something is done every week, and a week of work
#: has at most 60 (the working-time directive's 48 with overtime; beyond it the value is a typo).
WEEKLY_HOURS = Bounds(0.5, 60, "an average week of an activity: more than 0, at most 60 hours")
SFTP = "sftp"


@dataclass(frozen=True)
class Field:
    """One reported field: where the regulation asks for it and where it comes from."""

    name: str  # record field (snake_case)
    element: str  # payload element (the agency's CamelCase convention, DOMAIN.md)
    paragraph: str  # the regulation's paragraph, e.g. "§ 3 nr. 1"
    source: str  # source contract column(s), e.g. "persons.cpr"
    kind: str
    required: bool | str = True  # True, False, or the name of a condition (required when ...)
    codelist: str | None = None  # reference/<codelist>.csv for kind "code"
    description: str = ""
    #: Allowed only when this condition holds (otherwise it must be empty): "only where ..."
    only_when: str | None = None
    #: For kinds "hours" and "count" (and only them): the values the field can take.
    bounds: Bounds | None = None

    @property
    def range_text(self) -> str:
        """The bounds in words with the unit ("between 0.5 and 60 hours"); "" without bounds."""
        if self.bounds is None:
            return ""
        return self.bounds.text() + (" hours" if self.kind == "hours" else "")

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"field {self.name}: unknown kind {self.kind!r}")
        if (self.kind == "code") != (self.codelist is not None):
            raise ValueError(f"field {self.name}: kind 'code' goes with a codelist, and only it")
        if (self.kind in NUMBER_KINDS) != (self.bounds is not None):
            raise ValueError(f"field {self.name}: kinds {', '.join(NUMBER_KINDS)} declare their bounds, and only they")


@dataclass(frozen=True)
class Condition:
    """A required-when clause of the regulation ("for company-directed measures: ...")."""

    name: str
    description: str
    paragraph: str


@dataclass(frozen=True)
class Area:
    """One data area of the executive order."""

    number: int
    key: str  # stable machine name
    title: str
    chapter: str  # "Kapitel 1"
    paragraph: str  # the paragraph listing the fields, e.g. "§ 3"
    record_element: str  # payload element of one record, e.g. "InsuredMeasure"
    query: str  # extraction SQL, relative to sql/
    key_column: str  # the source key; the record id is derived from it
    fields: tuple[Field, ...]
    phase_in: date  # § 50: nothing dated before this is reported
    phase_in_paragraph: str
    channels: tuple[str, ...]
    #: Where the regulation limits the channels (e.g. "§ 17, stk. 2": web service only).
    channels_paragraph: str
    date_field: str  # the date that places a record in time (phase-in, code-list validity)
    conditions: tuple[Condition, ...] = ()
    #: The person group the area covers (§ 2, § 8, § 24 ...): rows outside it are not reported.
    scope: str = ""
    scope_paragraph: str = ""
    #: Reconciliation with grants and payments (§§ 4, 10, 15, 20, 26, 32, 38, 43).
    reconciliation_paragraph: str = ""
    person_field: str | None = "person_cpr"
    notes: tuple[str, ...] = ()
    #: Fields whose value distinguishes the kinds of record the regulation names (§ 30 nr. 1-2, § 36,
    #: § 42, stk. 1); with the conditions they define the record kinds of the conformance set (§ 46).
    kind_fields: tuple[str, ...] = ()

    @property
    def code(self) -> str:
        return f"area{self.number}"

    @property
    def record_type(self) -> str:
        return f"{self.record_element}Record"

    @property
    def field_names(self) -> list[str]:
        return [f.name for f in self.fields]

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"{self.code} has no field {name!r}")

    def condition(self, name: str) -> Condition:
        for c in self.conditions:
            if c.name == name:
                return c
        raise KeyError(f"{self.code} has no condition {name!r}")

    @property
    def query_path(self) -> Path:
        return SQL_DIR / self.query

    @property
    def cpr_fields(self) -> list[str]:
        return [f.name for f in self.fields if f.kind in ("cpr", "cpr_list")]


# Conditions shared by the two measure areas (§ 3 and § 9 "for ..." clauses).
JOBPLAN = Condition("jobplan", "the measure is part of a job plan", "§ 3 nr. 10-13, § 9 nr. 9-12")
COMPANY = Condition(
    "company_directed", "company-directed measure (internship, wage subsidy)", "§ 3 nr. 14-18, § 9 nr. 13-17"
)
STATE = Condition("state_wage_subsidy", "wage subsidy in a state institution", "§ 3 nr. 17, § 9 nr. 16")
COURSE = Condition("course", "course (guidance and upskilling)", "§ 3 nr. 19-21, § 9 nr. 18-19")
PROVIDER = Condition("has_provider", "company-directed measure or course", "§ 3 nr. 16 and 20, § 9 nr. 14 and 18")
ADDRESS = Condition(
    "address_needed",
    "company-directed measure whose provider CVR and/or P-number is missing",
    "§ 9 nr. 15",
)

_PERSON = "Identifikationsoplysninger for personen"


def _cpr(paragraph: str, source: str = "persons.cpr") -> Field:
    return Field("person_cpr", "PersonCivilRegistrationIdentifier", paragraph, source, "cpr", description=_PERSON)


def _municipality(paragraph: str, source: str) -> Field:
    return Field(
        "municipality_code", "MunicipalityCode", paragraph, source, "municipality",
        description="Kommunekode for indberettende kommune",
    )


# The fields areas 1 and 2 share: § 3 and § 9 list them in the same words under other numbers, so
# they are declared once here and each area names them with its own paragraph.
_MEASURE_FIELDS = {f.name: f for f in (
    Field("measure_type", "MeasureTypeCode", "", "measures.measure_type", "code", codelist="measure_types"),
    Field("start_date", "StartDate", "", "measures.start_date", "date"),
    Field("end_date", "EndDate", "", "measures.end_date", "date"),
    Field("weekly_hours", "HoursPerWeek", "", "measures.weekly_hours", "hours", bounds=WEEKLY_HOURS,
          description="Gennemsnitligt ugentligt timetal"),
    Field("jobplan_id", "JobPlanIdentifier", "", "jobplans.jobplan_id", "key", required="jobplan", only_when="jobplan"),
    Field("jobplan_created_on", "JobPlanCreatedDate", "", "jobplans.created_on", "date", required="jobplan",
          only_when="jobplan"),
    Field("jobplan_revised_on", "JobPlanRevisedDate", "", "jobplans.revised_on", "date", required=False,
          only_when="jobplan", description="Reported once the plan is revised"),
    Field("employment_goal", "EmploymentGoalText", "", "jobplans.employment_goal", "text", required="jobplan",
          only_when="jobplan"),
    Field("provider_cvr", "ProviderCVRnumberIdentifier", "", "measures.provider_cvr", "cvr",
          required="has_provider", only_when="has_provider"),
    Field("provider_pnr", "ProviderProductionUnitIdentifier", "", "measures.provider_pnr", "pnr",
          required="has_provider", only_when="has_provider"),
    Field("ministry_area", "MinistryAreaCode", "", "measures.ministry_area", "code", codelist="ministry_areas",
          required="state_wage_subsidy", only_when="state_wage_subsidy"),
    Field("job_title", "JobTitleText", "", "measures.job_title", "text", required="company_directed",
          only_when="company_directed", description="Stillingsbetegnelse"),
    Field("team_id", "TeamIdentifier", "", "measures.team_id", "key", required="course", only_when="course",
          description="Hold-ID"),
)}


def _measure(name: str, paragraph: str, **changes: object) -> Field:
    return replace(_MEASURE_FIELDS[name], paragraph=paragraph, **changes)  # type: ignore[arg-type]


AREAS: tuple[Area, ...] = (
    Area(
        number=1,
        key="insured_measures",
        title="Measures for unemployment-insurance recipients and employed persons",
        chapter="Kapitel 1",
        paragraph="§ 3",
        record_element="InsuredMeasure",
        query="extract/measures.sql",
        key_column="measure_id",
        phase_in=date(2010, 1, 4),
        phase_in_paragraph="§ 50, stk. 1",
        channels=(WEBSERVICE, SFTP),
        channels_paragraph="§ 6, § 51",
        date_field="start_date",
        scope="LAB § 2 nr. 1; LAB § 2 nr. 8 who are a-kasse members; training agreements with adults; "
        "employed persons (target group and a-kasse membership on the measure's start date)",
        scope_paragraph="§ 2",
        reconciliation_paragraph="§ 4",
        conditions=(JOBPLAN, COMPANY, STATE, COURSE, PROVIDER),
        fields=(
            _cpr("§ 3 nr. 1"),
            _municipality("§ 3 nr. 2", "measures.municipality_code"),
            Field("responsible_jobcentre", "ResponsibleJobcenterCode", "§ 3 nr. 3",
                  "measures.responsible_jobcenter", "jobcentre", description="Ansvarligt jobcenter"),
            Field("registering_jobcentre", "RegisteringJobcenterCode", "§ 3 nr. 4",
                  "measures.registering_jobcenter", "jobcentre", description="Registrerende jobcenter"),
            Field("measure_id", "MeasureIdentifier", "§ 3 nr. 5", "measures.measure_id", "key",
                  description="Unik nøgle for den enkelte foranstaltning"),
            _measure("measure_type", "§ 3 nr. 5",
                  description="Kind of measure (course, internship, wage subsidy): what § 3's 'for ...' "
                  "clauses refer to"),
            _measure("start_date", "§ 3 nr. 6"),
            _measure("end_date", "§ 3 nr. 7"),
            _measure("weekly_hours", "§ 3 nr. 8"),
            Field("activation_type", "ActivationTypeIdentifier", "§ 3 nr. 9", "measures.activation_type",
                  "code", codelist="activation_types", description="Aktiveringstype (økonomisk ramme m.v.)"),
            _measure("jobplan_id", "§ 3 nr. 10"),
            _measure("jobplan_created_on", "§ 3 nr. 11"),
            _measure("jobplan_revised_on", "§ 3 nr. 12"),
            _measure("employment_goal", "§ 3 nr. 13"),
            Field("job_order_id", "JobOrderIdentifier", "§ 3 nr. 14", "measures.job_order_id", "key",
                  required=False, only_when="company_directed", description="Jobnet ordrenummer, hvor det findes"),
            Field("job_order_type", "JobOrderTypeCode", "§ 3 nr. 15", "measures.job_order_type", "code",
                  codelist="job_order_types", required="company_directed", only_when="company_directed"),
            _measure("provider_cvr", "§ 3 nr. 16 and 20"),
            _measure("provider_pnr", "§ 3 nr. 16 and 20"),
            _measure("ministry_area", "§ 3 nr. 17"),
            _measure("job_title", "§ 3 nr. 18"),
            Field("course_type", "CourseTypeCode", "§ 3 nr. 19", "measures.course_type", "code",
                  codelist="course_types", required="course", only_when="course",
                  description="Afholdelseskategori"),
            _measure("team_id", "§ 3 nr. 21"),
        ),
    ),
    Area(
        number=2,
        key="uninsured_measures",
        title="Measures for non-insured persons",
        chapter="Kapitel 2",
        paragraph="§ 9",
        record_element="UninsuredMeasure",
        query="extract/measures.sql",
        key_column="measure_id",
        phase_in=date(2010, 1, 4),
        phase_in_paragraph="§ 50, stk. 1 (job-plan fields: stk. 2)",
        channels=(WEBSERVICE, SFTP),
        channels_paragraph="§ 12, § 51",
        date_field="start_date",
        scope="LAB § 2 nr. 2-7, 9 and 10; LAB § 2 nr. 8 who are not a-kasse members; introduction "
        "allowance and self-supporting persons under the integration act (on the measure's start date)",
        scope_paragraph="§ 8",
        reconciliation_paragraph="§ 10",
        conditions=(JOBPLAN, COMPANY, STATE, COURSE, PROVIDER, ADDRESS),
        fields=(
            _cpr("§ 9 nr. 1"),
            _municipality("§ 9 nr. 2", "measures.municipality_code"),
            _measure("measure_type", "§ 9 nr. 3", description="Foranstaltningstype med underkategorier"),
            _measure("start_date", "§ 9 nr. 4"),
            _measure("end_date", "§ 9 nr. 5"),
            _measure("weekly_hours", "§ 9 nr. 6"),
            Field("main_benefit", "MainBenefitCode", "§ 9 nr. 7", "benefits.benefit_code", "code",
                  codelist="benefit_types",
                  description="Hovedydelse on the start date; self-supporting is recorded as such (99)"),
            Field("open_offer", "OpenOfferIndicator", "§ 9 nr. 8", "measures.open_offer", "bool",
                  description="Åbent tilbud: paid only for hours attended"),
            _measure("jobplan_id", "§ 9 nr. 9"),
            _measure("jobplan_created_on", "§ 9 nr. 10"),
            _measure("jobplan_revised_on", "§ 9 nr. 11"),
            _measure("employment_goal", "§ 9 nr. 12"),
            Field("location_code", "LocationCode", "§ 9 nr. 13", "measures.location_code", "code",
                  codelist="location_codes", required="company_directed", only_when="company_directed",
                  description="Stedkode"),
            _measure("provider_cvr", "§ 9 nr. 14 and 18", required="course",
                     description="Required for courses (nr. 18); on a company-directed measure a missing CVR "
                     "requires the worksite address instead (nr. 15)"),
            _measure("provider_pnr", "§ 9 nr. 14 and 18", required="course"),
            Field("worksite_address", "WorksiteAddressText", "§ 9 nr. 15", "measures.worksite_address", "text",
                  required="address_needed", only_when="address_needed"),
            _measure("ministry_area", "§ 9 nr. 16"),
            _measure("job_title", "§ 9 nr. 17"),
            _measure("team_id", "§ 9 nr. 19"),
        ),
        notes=("§ 9 nr. 9-12 (job plan) are reported from the date set by `AMS_AREA2_JOBPLAN_FROM` "
               "(§ 50, stk. 2: 'when the technical solution is updated'); before it they are left out.",),
    ),
    Area(
        number=3,
        key="followup_interviews",
        title="Follow-up interviews with sick-listed persons held by the municipality",
        chapter="Kapitel 3",
        paragraph="§ 14",
        record_element="FollowUpInterview",
        query="extract/area3_followup_interviews.sql",
        key_column="interview_id",
        phase_in=date(2009, 10, 5),
        phase_in_paragraph="§ 50, stk. 3",
        channels=(WEBSERVICE,),
        channels_paragraph="§ 17, stk. 2",
        date_field="held_on",
        reconciliation_paragraph="§ 15",
        fields=(
            _cpr("§ 14 nr. 1"),
            _municipality("§ 14 nr. 2", "followup_interviews.municipality_code"),
            Field("held_on", "InterviewDate", "§ 14 nr. 3", "followup_interviews.held_on", "date"),
            Field("interview_form", "InterviewFormIdentifier", "§ 14 nr. 4",
                  "followup_interviews.interview_form", "code", codelist="interview_forms",
                  description="Samtaleform"),
            Field("visitation_category", "VisitationCategoryCode", "§ 14 nr. 5",
                  "followup_interviews.visitation_category", "code", codelist="visitation_categories",
                  description="Visitationskategori"),
            Field("visitation_rules", "VisitationCategoryRulesVersion", "§ 14 nr. 5",
                  "derived from followup_interviews.held_on", "key",
                  description="Which rules the category follows: 2005 (before 30 June 2014) or 2014"),
        ),
    ),
    Area(
        number=4,
        key="absence_interviews",
        title="Sickness-absence interviews held by the employer",
        chapter="Kapitel 4",
        paragraph="§ 19",
        record_element="AbsenceInterview",
        query="extract/area4_absence_interviews.sql",
        key_column="interview_id",
        phase_in=date(2010, 1, 4),
        phase_in_paragraph="§ 50, stk. 4 (from release; the order's date is used)",
        channels=(WEBSERVICE,),
        channels_paragraph="§ 22, stk. 2",
        date_field="held_on",
        reconciliation_paragraph="§ 20",
        conditions=(Condition("no_cvr", "the company reports by SE number", "§ 19 nr. 2"),),
        fields=(
            _cpr("§ 19 nr. 1"),
            Field("employer_cvr", "CVRnumberIdentifier", "§ 19 nr. 2", "absence_interviews.employer_cvr", "cvr",
                  required=False, description="CVR or SE number of the reporting company: exactly one"),
            Field("employer_se", "SEnumberIdentifier", "§ 19 nr. 2", "absence_interviews.employer_se", "se",
                  required="no_cvr", description="CVR or SE number of the reporting company: exactly one"),
            Field("held_on", "InterviewDate", "§ 19 nr. 3", "absence_interviews.held_on", "date"),
        ),
    ),
    Area(
        number=5,
        key="cv_interviews",
        title="CV interviews held by the municipality, and the CV's approval status",
        chapter="Kapitel 5",
        paragraph="§ 25",
        record_element="CvInterview",
        query="extract/area5_cv_interviews.sql",
        key_column="interview_id",
        phase_in=date(2009, 8, 1),
        phase_in_paragraph="§ 50, stk. 5",
        channels=(WEBSERVICE,),
        channels_paragraph="§ 28, stk. 2",
        date_field="held_on",
        scope="recipients of kontanthjælp/starthjælp solely because of unemployment (LAB § 2 nr. 2) or of "
        "integration benefit solely because of unemployment, on the interview date",
        scope_paragraph="§ 24",
        reconciliation_paragraph="§ 26",
        fields=(
            _cpr("§ 25 nr. 1"),
            _municipality("§ 25 nr. 2", "cv_interviews.municipality_code"),
            Field("held_on", "InterviewDate", "§ 25 nr. 3", "cv_interviews.held_on", "date"),
            Field("cv_status", "CvApprovalStatusCode", "§ 25 nr. 4", "cv_interviews.cv_status", "code",
                  codelist="cv_statuses", description="Godkendelsesstatus for cv'et"),
        ),
    ),
    Area(
        number=6,
        key="personal_assistance",
        title="Subsidy for personal assistance to persons with disabilities",
        chapter="Kapitel 6",
        paragraph="§ 31",
        record_element="PersonalAssistanceGrant",
        query="extract/area6_personal_assistance.sql",
        key_column="grant_id",
        phase_in=date(2009, 8, 1),
        phase_in_paragraph="§ 50, stk. 6",
        channels=(WEBSERVICE,),
        channels_paragraph="§ 34",
        date_field="start_date",
        reconciliation_paragraph="§ 32",
        kind_fields=("scheme",),
        fields=(
            _cpr("§ 31 nr. 1"),
            _municipality("§ 31 nr. 2", "personal_assistance_grants.municipality_code"),
            Field("scheme", "AssistanceSchemeCode", "§ 30 nr. 1-2", "personal_assistance_grants.scheme", "key",
                  description="EMPLOYMENT (§ 30 nr. 1) or EDUCATION (§ 30 nr. 2)"),
            Field("company_cvr", "CVRnumberIdentifier", "§ 31 nr. 3", "personal_assistance_grants.company_cvr",
                  "cvr"),
            Field("company_pnr", "ProductionUnitIdentifier", "§ 31 nr. 3",
                  "personal_assistance_grants.company_pnr", "pnr"),
            Field("start_date", "StartDate", "§ 31 nr. 4", "personal_assistance_grants.start_date", "date"),
            Field("end_date", "EndDate", "§ 31 nr. 5", "personal_assistance_grants.end_date", "date"),
            Field("weekly_hours", "HoursPerWeek", "§ 31 nr. 6", "personal_assistance_grants.weekly_hours",
                  "hours", bounds=WEEKLY_HOURS, description="Bevilget gennemsnitligt timetal pr. uge"),
        ),
    ),
    Area(
        number=7,
        key="mentor_support",
        title="Mentor support",
        chapter="Kapitel 7",
        paragraph="§ 37",
        record_element="MentorGrant",
        query="extract/area7_mentor_support.sql",
        key_column="grant_id",
        phase_in=date(2011, 1, 1),
        phase_in_paragraph="§ 50, stk. 7 (at the latest)",
        channels=(WEBSERVICE,),
        channels_paragraph="§ 40",
        date_field="start_date",
        reconciliation_paragraph="§ 38",
        person_field=None,
        kind_fields=("basis",),
        conditions=(
            Condition("per_person", "grant for an individual person", "§ 37 nr. 3, 4 and 7"),
            Condition("per_slot", "grant per slot (pr. plads, LAB § 80, stk. 2)", "§ 37 nr. 5, 6, 8 and 9"),
        ),
        fields=(
            _municipality("§ 37 nr. 1", "mentor_grants.municipality_code"),
            Field("basis", "MentorBasisCode", "§ 36", "mentor_grants.basis", "key",
                  description="PERSON or SLOT"),
            Field("company_cvr", "CVRnumberIdentifier", "§ 37 nr. 2", "mentor_grants.company_cvr", "cvr"),
            Field("company_pnr", "ProductionUnitIdentifier", "§ 37 nr. 2", "mentor_grants.company_pnr", "pnr"),
            Field("start_date", "StartDate", "§ 37 nr. 3 (per person), nr. 5 (per slot)", "mentor_grants.start_date",
                  "date",
                  description="Grant start (per person) or start of the period paid for (per slot)"),
            Field("end_date", "EndDate", "§ 37 nr. 4 (per person), nr. 6 (per slot)", "mentor_grants.end_date",
                  "date",
                  description="Grant end (per person) or end of the period paid for (per slot)"),
            Field("granted_hours", "GrantedMentorHours", "§ 37 nr. 7", "mentor_grants.granted_hours", "hours",
                  required="per_person", only_when="per_person",
                  bounds=Bounds(0.5, 2000, "a grant gives some mentor hours; 2000 is a full year's working hours")),
            Field("persons_paid", "PersonsPaidCount", "§ 37 nr. 8", "mentor_grants.persons_paid", "count",
                  required="per_slot", only_when="per_slot",
                  bounds=Bounds(1, None, "a slot grant pays for at least one person (§ 37 nr. 10 names them)")),
            Field("avg_paid_hours", "AveragePaidHoursPerPerson", "§ 37 nr. 9", "mentor_grants.avg_paid_hours",
                  "hours", required="per_slot", only_when="per_slot",
                  bounds=Bounds(0.5, 60, "hours paid per person and week: more than 0, at most 60")),
            Field("person_cprs", "PersonCivilRegistrationIdentifier", "§ 37 nr. 10",
                  "mentor_grant_persons -> persons.cpr", "cpr_list",
                  description="The persons who get mentor support (one for a person grant, one or more per slot)"),
        ),
    ),
    Area(
        number=8,
        key="aids",
        title="Aids (teaching material, work tools and minor workplace adaptations)",
        chapter="Kapitel 8",
        paragraph="§ 42, stk. 2",
        record_element="AidGrant",
        query="extract/area8_aids.sql",
        key_column="grant_id",
        phase_in=date(2011, 1, 1),
        phase_in_paragraph="§ 50, stk. 7 (at the latest)",
        channels=(WEBSERVICE,),
        channels_paragraph="§ 45",
        date_field="approved_on",
        reconciliation_paragraph="§ 43",
        kind_fields=("aid_kind",),
        conditions=(Condition("company_receives", "the company receives the subsidy", "§ 42, stk. 2, nr. 2"),),
        fields=(
            _municipality("§ 42, stk. 2, nr. 1", "aid_grants.municipality_code"),
            Field("aid_kind", "AidKindCode", "§ 42, stk. 1", "aid_grants.aid_kind", "key",
                  description="TEACHING_MATERIAL or WORK_TOOLS"),
            Field("company_cvr", "CVRnumberIdentifier", "§ 42, stk. 2, nr. 2", "aid_grants.company_cvr", "cvr",
                  required=False, description="Only where the company receives the subsidy"),
            Field("company_pnr", "ProductionUnitIdentifier", "§ 42, stk. 2, nr. 2", "aid_grants.company_pnr",
                  "pnr", required="company_receives", only_when="company_receives"),
            Field("approved_on", "ApprovalDate", "§ 42, stk. 2, nr. 3", "aid_grants.approved_on", "date"),
            _cpr("§ 42, stk. 2, nr. 4"),
        ),
    ),
)

#: Payload-only fields every record carries (the agency's convention, DOMAIN.md), not regulation fields.
RECORD_ID_ELEMENT = "RecordIdentifier"  # GUID the caller sets; sending it again updates the record
ACTION_ELEMENT = "RecordAction"  # CREATE_OR_UPDATE or ANNUL (KMD's create/update/cancel model)

AREA_BY_NUMBER = {a.number: a for a in AREAS}
AREA_BY_CODE = {a.code: a for a in AREAS}


def enabled_areas() -> list[Area]:
    """The areas this installation reports: all, or the numbers in AMS_AREAS (e.g. "1,2")."""
    import os

    wanted = os.environ.get("AMS_AREAS", "").strip()
    if not wanted:
        return list(AREAS)
    return [get_area(int(n)) for n in wanted.split(",") if n.strip()]


def get_area(ref: int | str) -> Area:
    """An area by number (1-8), code ('area1') or key ('insured_measures')."""
    if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
        return AREA_BY_NUMBER[int(ref)]
    for a in AREAS:
        if ref in (a.code, a.key):
            return a
    raise KeyError(f"no data area {ref!r}; known: {', '.join(a.code for a in AREAS)}")


# --------------------------------------------------------------------------------------------------
# Interface versions (§ 46: the connection agreement fixes the interface descriptions; § 49: a change
# to the reporting system goes live no sooner than 40 working days after notice)
# --------------------------------------------------------------------------------------------------

INTERFACE_NAMESPACE = "urn:dk:ams:employment-reporting:{name}"
#: Schedules interface versions by configuration: "v2=2027-03-01,v3=..." (see docs/operations.md, § 49).
INTERFACE_EFFECTIVE_ENV = "AMS_INTERFACE_EFFECTIVE"


@dataclass(frozen=True)
class InterfaceVersion:
    """One version of the agency's interface: its fields and elements, and the date it takes effect.

    A version states its changes against the version it is `based_on`; the first version is the
    registry's areas as they are. Its XSD and WSDL are generated from the result (transforms.payload).
    """

    name: str  # "v1": names the namespace and the schema files
    schema_version: str  # "1.0": the XSD's version attribute
    effective: date | None  # first day records are sent in this version; None: not scheduled
    description: str
    based_on: InterfaceVersion | None = None
    #: A sample that proves the mechanism; never the agency's interface. Sent only when scheduled.
    sample: bool = False
    #: (area number, field, name of the field it follows) for each field the version adds.
    added: tuple[tuple[int, Field, str], ...] = ()
    #: (area number, field name) for each field the version no longer carries.
    removed: tuple[tuple[int, str], ...] = ()
    #: (area number, field name, new element) for each element the version renames.
    renamed: tuple[tuple[int, str, str], ...] = ()

    @property
    def namespace(self) -> str:
        return INTERFACE_NAMESPACE.format(name=self.name)

    @property
    def xsd_name(self) -> str:
        return f"ams-reporting-{self.name}.xsd"

    @property
    def wsdl_name(self) -> str:
        return f"ams-reporting-{self.name}.wsdl"

    def area(self, ref: int | str | Area) -> Area:
        """The area as this version sends it: fields added, removed and renamed."""
        number = ref.number if isinstance(ref, Area) else get_area(ref).number
        base = self.based_on.area(number) if self.based_on else AREA_BY_NUMBER[number]
        fields = [f for f in base.fields if (number, f.name) not in self.removed]
        renames = {name: element for n, name, element in self.renamed if n == number}
        fields = [replace(f, element=renames[f.name]) if f.name in renames else f for f in fields]
        for n, added, after in self.added:
            if n == number:
                names = [f.name for f in fields]
                fields.insert(names.index(after) + 1 if after in names else len(fields), added)
        return replace(base, fields=tuple(fields)) if fields != list(base.fields) else base

    def areas(self) -> tuple[Area, ...]:
        return tuple(self.area(a.number) for a in AREAS)


V1 = InterfaceVersion(
    name="v1",
    schema_version="1.0",
    effective=date(2010, 1, 4),  # § 50, stk. 1: the order's entry into force
    description="The interface of the executive order's fields (BEK 2010), the project's own contract (§ 46)",
)

V2_SAMPLE = InterfaceVersion(
    name="v2",
    schema_version="2.0-sample",
    effective=None,  # a sample: in force only where AMS_INTERFACE_EFFECTIVE schedules it (tests, rehearsals)
    based_on=V1,
    sample=True,
    description="an interface change that proves the mechanism of § 49 (area 3: one field added, one removed, "
    "one element renamed); not announced by the agency",
    added=((3, Field("interview_id", "InterviewIdentifier", "§ 14 (sample v2)", "followup_interviews.interview_id",
                     "key", description="The municipality's own key of the interview (sample v2)"), "held_on"),),
    removed=((3, "visitation_rules"),),
    renamed=((3, "interview_form", "InterviewFormCode"),),
)

INTERFACE_VERSIONS: tuple[InterfaceVersion, ...] = (V1, V2_SAMPLE)
VERSION_BY_NAME = {v.name: v for v in INTERFACE_VERSIONS}
VERSION_BY_NAMESPACE = {v.namespace: v for v in INTERFACE_VERSIONS}


def get_version(ref: str | InterfaceVersion) -> InterfaceVersion:
    if isinstance(ref, InterfaceVersion):
        return ref
    try:
        return VERSION_BY_NAME[ref]
    except KeyError:
        raise KeyError(f"no interface version {ref!r}; known: {', '.join(VERSION_BY_NAME)}") from None


def interface_schedule(env: dict[str, str] | None = None) -> dict[str, date | None]:
    """Each version's effective date: the registry's, or the one AMS_INTERFACE_EFFECTIVE sets."""
    import os

    schedule = {v.name: v.effective for v in INTERFACE_VERSIONS}
    raw = (os.environ if env is None else env).get(INTERFACE_EFFECTIVE_ENV, "")
    for item in filter(None, (part.strip() for part in raw.split(","))):
        name, _, day = item.partition("=")
        if name.strip() not in schedule or not day.strip():
            raise ValueError(f"{INTERFACE_EFFECTIVE_ENV}: {item!r} is not <version>=<YYYY-MM-DD> with a version of "
                             f"{', '.join(schedule)}")
        try:
            schedule[name.strip()] = date.fromisoformat(day.strip())
        except ValueError:
            raise ValueError(f"{INTERFACE_EFFECTIVE_ENV}: {day.strip()!r} is not a date (YYYY-MM-DD)") from None
    return schedule


def version_in_force(on: date, env: dict[str, str] | None = None) -> InterfaceVersion:
    """The interface version records are sent in on `on` (a run's date): the latest scheduled
    version whose effective date is on or before it; the first version before any."""
    schedule = interface_schedule(env)
    scheduled = [(day, i) for i, v in enumerate(INTERFACE_VERSIONS) if (day := schedule[v.name]) and day <= on]
    return INTERFACE_VERSIONS[max(scheduled)[1]] if scheduled else INTERFACE_VERSIONS[0]
