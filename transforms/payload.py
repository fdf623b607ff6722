"""The payload contract: the XSD and WSDL generated from the registry, and XML batches built with lxml.

The agency's interface descriptions (§ 46) are not public, so the project owns this contract and
follows the conventions of the agency's published services (DOMAIN.md): English CamelCase element
names, caller-set GUID record identifiers, a `ServiceReceipt`, numbered error codes. Every element
of the XSD is annotated with the paragraph that asks for it.

Each interface version of the registry (§ 49) has its own namespace and its own generated
`schemas/ams-reporting-<version>.xsd` and `.wsdl` (`python -m transforms.payload`); a test fails when
they drift from the registry. A payload is validated against the schema of its namespace.

Personal data: error messages name the element, the record identifier (a GUID) and the rule that
failed, never the offending value. No Airflow import here; pandas is imported only by build_batch.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lxml import etree

from transforms.registry import (
    INTERFACE_VERSIONS,
    RECORD_ID_ELEMENT,
    SCHEMA_DIR,
    V1,
    VERSION_BY_NAMESPACE,
    Area,
    Field,
    InterfaceVersion,
    get_area,
    get_version,
)

if TYPE_CHECKING:
    import pandas as pd

NAMESPACE = V1.namespace  # the first version's; every version has its own (registry.InterfaceVersion)
SCHEMA_VERSION = V1.schema_version
XSD_NAME = V1.xsd_name
WSDL_NAME = V1.wsdl_name
XSD_PATH = SCHEMA_DIR / XSD_NAME
WSDL_PATH = SCHEMA_DIR / WSDL_NAME

XS_NS = "http://www.w3.org/2001/XMLSchema"
WSDL_NS = "http://schemas.xmlsoap.org/wsdl/"
WSDL_SOAP_NS = "http://schemas.xmlsoap.org/wsdl/soap/"
SOAP_ENV_NS = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP_HTTP_TRANSPORT = "http://schemas.xmlsoap.org/soap/http"

SERVICE_NAME = "EmploymentReportingService"
PORT_TYPE_NAME = "EmploymentReportingPortType"
BINDING_NAME = "EmploymentReportingBinding"
PORT_NAME = "EmploymentReportingPort"
DEFAULT_ENDPOINT = "http://localhost/ams"  # placeholder; clients and the receiver override it
OPERATIONS = ("SubmitBatch", "GetBatchReceipt")


def soap_action(operation: str, version: InterfaceVersion = V1) -> str:
    return f"{version.namespace}/{operation}"


#: Record actions of the records frame (docs/architecture.md).
ACTION_CREATE_OR_UPDATE = "CREATE_OR_UPDATE"
ACTION_ANNUL = "ANNUL"

ANNULMENT_ELEMENT = "Annulment"
PERSONS_ELEMENT = "Persons"

BATCH_ACCEPTED = "ACCEPTED"
BATCH_PARTIALLY_ACCEPTED = "PARTIALLY_ACCEPTED"
BATCH_REJECTED = "REJECTED"
RECORD_ACCEPTED = "ACCEPTED"
RECORD_REJECTED = "REJECTED"

#: Error codes, in the numbering style of the agency's published services (DOMAIN.md).
ERR_UNKNOWN_CPR = 1010
ERR_SCHEMA = 1014
ERR_UNKNOWN_BATCH = 1020
ERR_BATCH_REUSED = 1030
ERR_UNKNOWN_RECORD = 1040
ERR_RECORD_AREA = 1041
ERR_SIGNATURE = 1050
ERR_ACCESS_CLOSED = 2001
ERR_BUSY = 3001
ERROR_TEXTS: dict[int, str] = {
    ERR_UNKNOWN_CPR: "Ukendt personnummer",
    ERR_SCHEMA: "Failed to validate message",
    ERR_UNKNOWN_BATCH: "Unknown batch identifier",
    ERR_BATCH_REUSED: "Batch identifier already used for a batch with different content",
    ERR_UNKNOWN_RECORD: "Unknown record identifier: nothing to annul",
    ERR_RECORD_AREA: "Record identifier already used in another data area",
    ERR_SIGNATURE: "Signature missing or invalid",
    ERR_ACCESS_CLOSED: "Access closed by the agency",
    ERR_BUSY: "Service busy, try again later",
}


class PayloadError(ValueError):
    """A payload that cannot be built or does not validate. The message carries no field values."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


def q(local: str, namespace: str = NAMESPACE) -> str:
    """Clark notation of an element of the contract's namespace (the first version's by default)."""
    return f"{{{namespace}}}{local}"


def namespace_of(element: etree._Element) -> str:
    """The namespace of an element (which interface version a message is in)."""
    return etree.QName(element).namespace or ""


def version_of(element: etree._Element) -> InterfaceVersion | None:
    """The interface version of a message by its namespace; None when the namespace is unknown."""
    return VERSION_BY_NAMESPACE.get(namespace_of(element))


# --------------------------------------------------------------------------------------------------
# XSD
# --------------------------------------------------------------------------------------------------

#: One XSD simple type per registry field kind (cpr_list is the Persons wrapper of CprNumberType).
KIND_TYPES: dict[str, str] = {
    "cpr": "CprNumberType",
    "municipality": "MunicipalityCodeType",
    "jobcentre": "JobcentreCodeType",
    "cvr": "CvrNumberType",
    "pnr": "ProductionUnitNumberType",
    "se": "SeNumberType",
    "key": "KeyType",
    "date": "DateType",
    "hours": "HoursType",
    "count": "CountType",
    "text": "TextType",
    "code": "CodeType",
    "bool": "BooleanType",
    "cpr_list": "PersonsType",
}
GUID_PATTERN = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"

# (name, base, facets, documentation)
_SIMPLE_TYPES: tuple[tuple[str, str, tuple[tuple[str, str], ...], str], ...] = (
    ("GuidType", "xs:string", (("pattern", GUID_PATTERN),),
     "A GUID the caller sets (the agency's convention); sending the same id again updates."),
    ("CprNumberType", "xs:string", (("pattern", r"\d{10}"),),
     "CPR number, 10 digits without hyphen (DDMMYYSSSS); 0000000000 means required but unknown."),
    ("MunicipalityCodeType", "xs:string", (("pattern", r"\d{3}"),), "Kommunekode, 3 digits."),
    ("JobcentreCodeType", "xs:string", (("pattern", r"\d{5}"),),
     "Jobcentre, 5 digits: kommunekode and a 2-digit sub-unit."),
    ("CvrNumberType", "xs:string", (("pattern", r"[1-9]\d{7}"),),
     "CVR number, 8 digits, no leading zero (modulus 11 is checked before delivery)."),
    ("ProductionUnitNumberType", "xs:string", (("pattern", r"\d{10}"),), "P-number, 10 digits."),
    ("SeNumberType", "xs:string", (("pattern", r"\d{8}"),), "SE number, 8 digits."),
    ("KeyType", "xs:string", (("minLength", "1"), ("maxLength", "64")), "A source system's key."),
    ("TextType", "xs:string", (("minLength", "1"), ("maxLength", "200")), "Free text."),
    ("DateType", "xs:date", (), "A calendar date."),
    ("HoursType", "xs:decimal",
     (("totalDigits", "6"), ("fractionDigits", "2"), ("minInclusive", "0"), ("maxInclusive", "9999.99")),
     "Hours, decimal with up to 2 fraction digits."),
    ("CountType", "xs:nonNegativeInteger", (), "A count."),
    ("CodeType", "xs:string", (("minLength", "1"), ("maxLength", "20")),
     "A value of a code list. The lists are versioned data (reference/), not part of the schema."),
    ("BooleanType", "xs:boolean", (), "true or false."),
    ("DataAreaType", "xs:int", (("minInclusive", "1"), ("maxInclusive", "8")),
     "The data area (1-8): the chapter of the executive order the batch reports under."),
    ("RunIdentifierType", "xs:string", (("minLength", "1"), ("maxLength", "250")),
     "The sender's run identifier (for tracing only)."),
    ("BatchStatusType", "xs:string", (), "The outcome of a batch."),
    ("RecordStatusType", "xs:string", (), "The outcome of one record."),
    ("ErrorCodeType", "xs:int", (), "An error code in the agency's numbering."),
    ("ErrorTextType", "xs:string", (("maxLength", "4000"),), "A readable error text, without personal data."),
)
_ENUMS = {
    "BatchStatusType": (BATCH_ACCEPTED, BATCH_PARTIALLY_ACCEPTED, BATCH_REJECTED),
    "RecordStatusType": (RECORD_ACCEPTED, RECORD_REJECTED),
}


def _xs(parent: etree._Element, tag: str, **attrs: str) -> etree._Element:
    el = etree.SubElement(parent, f"{{{XS_NS}}}{tag}")
    for key, value in attrs.items():
        el.set(key, value)
    return el


def _doc(parent: etree._Element, text: str) -> None:
    ann = _xs(parent, "annotation")
    _xs(ann, "documentation").text = text


def _element(parent: etree._Element, name: str, type_: str, doc: str, *, min_occurs: int = 1,
             max_occurs: str | None = None) -> etree._Element:
    attrs = {"name": name, "type": type_}
    if min_occurs != 1:
        attrs["minOccurs"] = str(min_occurs)
    if max_occurs is not None:
        attrs["maxOccurs"] = max_occurs
    el = _xs(parent, "element", **attrs)
    _doc(el, doc)
    return el


def field_documentation(area: Area, f: Field) -> str:
    """The annotation of a field's element: paragraph, description, when it is required."""
    parts = [f.paragraph]
    if f.description:
        parts.append(f.description)
    if f.required is False:
        parts.append("Optional")
    elif isinstance(f.required, str):
        cond = area.condition(f.required)
        parts.append(f"Required when: {cond.description} ({cond.paragraph})")
    if f.only_when and f.only_when != f.required:
        cond = area.condition(f.only_when)
        parts.append(f"Only where: {cond.description}")
    elif f.only_when:
        parts.append("Empty otherwise")
    if f.codelist:
        parts.append(f"Code list: reference/{f.codelist}.csv")
    if f.kind == "cpr_list":
        parts.append(f"{PERSONS_ELEMENT} holds one {f.element} per person")
    return ". ".join(parts)


def _record_type(schema: etree._Element, area: Area) -> None:
    ctype = _xs(schema, "complexType", name=area.record_type)
    _doc(ctype, f"Area {area.number}, {area.chapter}, {area.paragraph}: {area.title}")
    seq = _xs(ctype, "sequence")
    _element(seq, RECORD_ID_ELEMENT, "ams:GuidType",
             "The record's identifier (GUID, stable per source key): sending it again updates the record")
    seen: set[str] = set()
    for f in area.fields:
        name = PERSONS_ELEMENT if f.kind == "cpr_list" else f.element
        if name in seen:
            raise ValueError(f"{area.code}: element {name} appears twice")
        seen.add(name)
        _element(seq, name, f"ams:{KIND_TYPES[f.kind]}", field_documentation(area, f),
                 min_occurs=1 if f.required is True else 0)


def _complex(schema: etree._Element, name: str, doc: str,
             children: Iterable[tuple[str, str, str, int, str | None]]) -> None:
    ctype = _xs(schema, "complexType", name=name)
    _doc(ctype, doc)
    seq = _xs(ctype, "sequence")
    for el_name, type_, el_doc, min_occurs, max_occurs in children:
        _element(seq, el_name, type_, el_doc, min_occurs=min_occurs, max_occurs=max_occurs)


def _version_note(version: InterfaceVersion) -> str:
    if version.based_on is None:
        return ""
    when = version.effective.isoformat() if version.effective else "not scheduled"
    sample = "SAMPLE, not an agency interface: " if version.sample else ""
    return f" {sample}{version.description}; effective {when} (§ 49)."


def generate_xsd(version: InterfaceVersion | str = V1) -> str:
    """The XSD of an interface version's payload, generated from the registry (deterministic)."""
    version = get_version(version)
    areas = version.areas()
    schema = etree.Element(f"{{{XS_NS}}}schema", nsmap={"xs": XS_NS, "ams": version.namespace})
    schema.set("targetNamespace", version.namespace)
    schema.set("elementFormDefault", "qualified")
    schema.set("version", version.schema_version)
    _doc(schema, "Employment-area reporting to the labour market agency (BEK 2010, §§ 1-51), version "
         f"{version.schema_version}.{_version_note(version)} GENERATED by transforms/payload.py from "
         "transforms/registry.py: do not edit.")

    for name, base, facets, doc in _SIMPLE_TYPES:
        stype = _xs(schema, "simpleType", name=name)
        _doc(stype, doc)
        restriction = _xs(stype, "restriction", base=base)
        for facet, value in facets:
            _xs(restriction, facet, value=value)
        for value in _ENUMS.get(name, ()):
            _xs(restriction, "enumeration", value=value)

    persons = _xs(schema, "complexType", name="PersonsType")
    _doc(persons, "Several persons (kind cpr_list), e.g. the persons given mentor support per slot (§ 37)")
    _element(_xs(persons, "sequence"), "PersonCivilRegistrationIdentifier", "ams:CprNumberType",
             "One person's CPR number", max_occurs="unbounded")

    for area in areas:
        _record_type(schema, area)

    _complex(schema, "AnnulmentType", "A record deleted at the source after delivery: annul it at the receiver",
             [(RECORD_ID_ELEMENT, "ams:GuidType", "The identifier of the record to annul", 1, None)])
    _complex(schema, "BatchHeaderType", "Identifies a batch; the batch identifier makes a resend idempotent", [
        ("BatchIdentifier", "ams:GuidType", "The batch's identifier (GUID, deterministic per content)", 1, None),
        ("DataArea", "ams:DataAreaType", "The data area (1-8) every record of the batch belongs to", 1, None),
        ("SenderMunicipalityCode", "ams:MunicipalityCodeType", "The reporting municipality (§ 1)", 1, None),
        ("RunIdentifier", "ams:RunIdentifierType", "The sender's run, for tracing", 1, None),
        ("CreatedDateTime", "xs:dateTime", "When the batch was built", 1, None),
        ("RecordCount", "xs:nonNegativeInteger", "The number of records and annulments in the batch", 1, None),
    ])

    records = _xs(schema, "complexType", name="RecordsType")
    _doc(records, "The records of one data area (DataArea) and annulments, in any order")
    choice = _xs(_xs(records, "sequence"), "choice", maxOccurs="unbounded")
    for area in areas:
        _element(choice, area.record_element, f"ams:{area.record_type}",
                 f"A record of area {area.number} ({area.paragraph})")
    _element(choice, ANNULMENT_ELEMENT, "ams:AnnulmentType", "Annul a record delivered before")

    _complex(schema, "SubmitBatchRequestType", "A batch of records of one data area", [
        ("BatchHeader", "ams:BatchHeaderType", "The batch header", 1, None),
        ("Records", "ams:RecordsType", "The records", 1, None),
    ])
    request = _xs(schema, "element", name="SubmitBatchRequest", type="ams:SubmitBatchRequestType")
    _doc(request, "Submit a batch (operation SubmitBatch); idempotent on BatchIdentifier")
    unique = _xs(request, "unique", name="UniqueRecordIdentifier")
    _xs(unique, "selector", xpath="ams:Records/*")
    _xs(unique, "field", xpath=f"ams:{RECORD_ID_ELEMENT}")

    _complex(schema, "ServiceReceiptType", "The agency's receipt of a message", [
        ("MessageIdentifier", "ams:GuidType", "The receipt's identifier", 1, None),
        ("EventDate", "xs:dateTime", "When the receiver processed the message", 1, None),
    ])
    _complex(schema, "RecordReceiptType", "The outcome of one record", [
        (RECORD_ID_ELEMENT, "ams:GuidType", "The record", 1, None),
        ("Status", "ams:RecordStatusType", "ACCEPTED or REJECTED", 1, None),
        ("ErrorCode", "ams:ErrorCodeType", "Why the record was rejected", 0, None),
        ("ErrorText", "ams:ErrorTextType", "Why the record was rejected, readable", 0, None),
    ])
    _complex(schema, "RecordReceiptsType", "One receipt per record of the batch, in the batch's order", [
        ("RecordReceipt", "ams:RecordReceiptType", "The outcome of one record", 0, "unbounded"),
    ])
    _complex(schema, "BatchReceiptType", "The receiver's answer to a batch", [
        ("ServiceReceipt", "ams:ServiceReceiptType", "The agency's receipt (convention)", 1, None),
        ("BatchIdentifier", "ams:GuidType", "The batch answered", 1, None),
        ("BatchStatus", "ams:BatchStatusType", "ACCEPTED, PARTIALLY_ACCEPTED or REJECTED", 1, None),
        ("RecordReceipts", "ams:RecordReceiptsType", "Per-record outcomes", 1, None),
    ])
    _complex(schema, "GetBatchReceiptRequestType", "Ask for the receipt of a batch sent before", [
        ("BatchIdentifier", "ams:GuidType", "The batch", 1, None),
    ])
    _complex(schema, "ServiceFaultType", "A SOAP fault's detail", [
        ("ErrorCode", "ams:ErrorCodeType",
         "1014 schema, 1020 unknown batch, 1030 batch id reused, 2001 access closed (§ 48), 3001 busy. "
         "Record-level codes (RecordReceipt): 1010 unknown CPR number, 1040 unknown record, 1041 other area", 1, None),
        ("ErrorText", "ams:ErrorTextType", "Readable text, without personal data", 1, None),
    ])
    for name, type_, doc in (
        ("SubmitBatchResponse", "BatchReceiptType", "The answer to SubmitBatch"),
        ("GetBatchReceiptRequest", "GetBatchReceiptRequestType", "Operation GetBatchReceipt"),
        ("GetBatchReceiptResponse", "BatchReceiptType", "The stored answer to a batch (same as SubmitBatch's)"),
        ("ServiceFault", "ServiceFaultType", "The detail of every SOAP fault of the service"),
    ):
        el = _xs(schema, "element", name=name, type=f"ams:{type_}")
        _doc(el, doc)

    etree.indent(schema, space="  ")
    return etree.tostring(schema, xml_declaration=True, encoding="UTF-8").decode("utf-8") + "\n"


# --------------------------------------------------------------------------------------------------
# WSDL
# --------------------------------------------------------------------------------------------------


def generate_wsdl(endpoint: str = DEFAULT_ENDPOINT, version: InterfaceVersion | str = V1) -> str:
    """The WSDL of an interface version (document/literal, SOAP 1.1); it imports the XSD by relative location."""
    version = get_version(version)
    w = f"{{{WSDL_NS}}}"
    s = f"{{{WSDL_SOAP_NS}}}"
    defs = etree.Element(f"{w}definitions", nsmap={
        "wsdl": WSDL_NS, "soap": WSDL_SOAP_NS, "xs": XS_NS, "tns": version.namespace})
    defs.set("name", SERVICE_NAME)
    defs.set("targetNamespace", version.namespace)
    etree.SubElement(defs, f"{w}documentation").text = (
        f"Employment-area reporting to the labour market agency.{_version_note(version)} GENERATED by "
        "transforms/payload.py.")
    types = etree.SubElement(defs, f"{w}types")
    schema = _xs(types, "schema")
    _xs(schema, "import", namespace=version.namespace, schemaLocation=version.xsd_name)

    messages = {
        "SubmitBatchRequestMessage": "SubmitBatchRequest",
        "SubmitBatchResponseMessage": "SubmitBatchResponse",
        "GetBatchReceiptRequestMessage": "GetBatchReceiptRequest",
        "GetBatchReceiptResponseMessage": "GetBatchReceiptResponse",
        "ServiceFaultMessage": "ServiceFault",
    }
    for name, element in messages.items():
        msg = etree.SubElement(defs, f"{w}message", name=name)
        part = etree.SubElement(msg, f"{w}part", name="parameters" if element != "ServiceFault" else "fault")
        part.set("element", f"tns:{element}")

    port_type = etree.SubElement(defs, f"{w}portType", name=PORT_TYPE_NAME)
    for op in OPERATIONS:
        el = etree.SubElement(port_type, f"{w}operation", name=op)
        etree.SubElement(el, f"{w}input", message=f"tns:{op}RequestMessage")
        etree.SubElement(el, f"{w}output", message=f"tns:{op}ResponseMessage")
        etree.SubElement(el, f"{w}fault", name="ServiceFault", message="tns:ServiceFaultMessage")

    binding = etree.SubElement(defs, f"{w}binding", name=BINDING_NAME, type=f"tns:{PORT_TYPE_NAME}")
    etree.SubElement(binding, f"{s}binding", style="document", transport=SOAP_HTTP_TRANSPORT)
    for op in OPERATIONS:
        el = etree.SubElement(binding, f"{w}operation", name=op)
        etree.SubElement(el, f"{s}operation", soapAction=soap_action(op, version), style="document")
        etree.SubElement(etree.SubElement(el, f"{w}input"), f"{s}body", use="literal")
        etree.SubElement(etree.SubElement(el, f"{w}output"), f"{s}body", use="literal")
        fault = etree.SubElement(el, f"{w}fault", name="ServiceFault")
        etree.SubElement(fault, f"{s}fault", name="ServiceFault", use="literal")

    service = etree.SubElement(defs, f"{w}service", name=SERVICE_NAME)
    port = etree.SubElement(service, f"{w}port", name=PORT_NAME, binding=f"tns:{BINDING_NAME}")
    etree.SubElement(port, f"{s}address", location=endpoint)

    etree.indent(defs, space="  ")
    return etree.tostring(defs, xml_declaration=True, encoding="UTF-8").decode("utf-8") + "\n"


def schema_files(directory: Path | None = None) -> list[tuple[Path, str]]:
    """Every interface version's XSD and WSDL: (path, generated text)."""
    directory = directory or SCHEMA_DIR
    return [(directory / name, text) for v in INTERFACE_VERSIONS
            for name, text in ((v.xsd_name, generate_xsd(v)), (v.wsdl_name, generate_wsdl(version=v)))]


def write_schema(directory: Path | None = None) -> list[Path]:
    """Write the generated XSDs and WSDLs of every version (schemas/ by default); returns the paths written."""
    (directory or SCHEMA_DIR).mkdir(parents=True, exist_ok=True)
    written = []
    for path, text in schema_files(directory):
        path.write_text(text, encoding="utf-8")
        written.append(path)
    _local.__dict__.clear()  # this thread's compiled schemas; other threads keep theirs
    return written


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------

_local = threading.local()  # lxml validators keep their error log on the instance: one per thread


def xml_parser() -> etree.XMLParser:
    """A parser for payloads: large trees allowed, no entities resolved, no network."""
    return etree.XMLParser(huge_tree=True, resolve_entities=False, no_network=True, load_dtd=False)


def schema(version: InterfaceVersion | str = V1) -> etree.XMLSchema:
    """A version's compiled XSD (schemas/ams-reporting-<version>.xsd, or generated when the file is
    absent), per thread."""
    version = get_version(version)
    compiled = _local.__dict__.get(version.name)
    if compiled is None:
        path = SCHEMA_DIR / version.xsd_name
        if path.exists():
            doc = etree.parse(str(path), xml_parser())
        else:
            doc = etree.ElementTree(etree.fromstring(generate_xsd(version).encode("utf-8"), xml_parser()))
        compiled = etree.XMLSchema(doc)
        _local.__dict__[version.name] = compiled
    return compiled


_NS_RE = re.compile(r"\{[^{}]*:[^{}]*\}")  # {urn:...} namespaces, not {10} quantifiers
_VALUE_RE = re.compile(r"[Tt]he value '[^']*'")
_LEADING_VALUE_RE = re.compile(r"^'[^']*'( is not a valid value)")
_KEY_SEQ_RE = re.compile(r"key-sequence \[[^\]]*\]")
_DIGITS_RE = re.compile(r"\d{6,}")
_ELEMENT_PREFIX_RE = re.compile(r"^Element '[^']*'(?:, attribute '[^']*')?: ")
MAX_PROBLEMS = 20


def clean_message(message: str, *, keep_element: bool = False) -> str:
    """A validator message without the offending value (it may be a CPR number or free text).

    The leading "Element 'X': " is dropped unless `keep_element` (callers give a path instead).
    """
    text = _NS_RE.sub("", message.strip())
    if not keep_element:
        text = _ELEMENT_PREFIX_RE.sub("", text)
    text = _VALUE_RE.sub("The value", text)
    text = _LEADING_VALUE_RE.sub(r"The value\1", text)
    text = _KEY_SEQ_RE.sub("key-sequence", text)
    return _DIGITS_RE.sub("[digits removed]", text)


def _local_name(el: etree._Element) -> str:
    return etree.QName(el).localname


def describe_element(el: etree._Element, top: etree._Element) -> str:
    """A readable path from `top` to `el`, e.g. Records/InsuredMeasure[3] (record <guid>)/StartDate."""
    steps = []
    node: etree._Element | None = el
    while node is not None:
        name = _local_name(node)
        parent = node.getparent()
        if parent is not None and node is not top and _local_name(parent) == "Records":
            rid = node.findtext(q(RECORD_ID_ELEMENT, namespace_of(node)))
            name = f"{name}[{parent.index(node) + 1}]"
            if rid and re.fullmatch(GUID_PATTERN, rid.strip()):
                name += f" (record {rid.strip()})"
        elif parent is not None and node is not top and _local_name(parent) == PERSONS_ELEMENT:
            name = f"{name}[{parent.index(node) + 1}]"
        steps.append(name)
        if node is top:
            break
        node = parent
    return "/".join(reversed(steps))


def _resolve(top: etree._Element, path: str | None) -> etree._Element | None:
    if not path or not path.startswith("/*"):
        return None
    relative = "." + path[2:]
    try:
        found = top.xpath(relative)
    except etree.XPathError:
        return None
    return found[0] if found and isinstance(found[0], etree._Element) else None


def _batch_problems(root: etree._Element) -> list[str]:
    """What the XSD cannot say: every record belongs to the header's area; RecordCount is right."""
    problems: list[str] = []
    version = version_of(root) or V1
    ns = version.namespace
    header = root.find(q("BatchHeader", ns))
    records = root.find(q("Records", ns))
    if header is None or records is None:
        return problems
    number = int(header.findtext(q("DataArea", ns)) or 0)
    if not 1 <= number <= 8:
        return problems
    area = version.area(number)
    allowed = (q(area.record_element, ns), q(ANNULMENT_ELEMENT, ns))
    wrong = [el for el in records if el.tag not in allowed]
    if wrong:
        first = wrong[0]
        problems.append(
            f"line {first.sourceline}: {describe_element(first, root)}: {len(wrong)} record(s) do not belong "
            f"to DataArea {area.number} (expected {area.record_element} or {ANNULMENT_ELEMENT})")
    count = len(records)
    declared = int(header.findtext(q("RecordCount", ns)) or -1)
    if declared != count:
        problems.append(f"BatchHeader/RecordCount: declares {declared} records, the batch holds {count}")
    return problems


def payload_problems(element: etree._Element) -> list[str]:
    """Readable problems of a request element (SubmitBatchRequest, GetBatchReceiptRequest); [] if valid.

    Works on a sub-element too (the receiver validates the SOAP body's child in place). The schema is
    the one of the element's namespace: each interface version has its own.
    """
    version = version_of(element)
    if version is None:
        known = ", ".join(v.namespace for v in INTERFACE_VERSIONS)
        return [f"{_local_name(element)}: namespace {namespace_of(element) or '(none)'} is not an interface version "
                f"this service knows ({known})"]
    validator = schema(version)
    if validator.validate(element):
        return _batch_problems(element) if _local_name(element) == "SubmitBatchRequest" else []
    problems = []
    errors = list(validator.error_log)
    for entry in errors[:MAX_PROBLEMS]:
        node = _resolve(element, entry.path)
        if node is not None:
            problems.append(f"line {entry.line}: {describe_element(node, element)}: {clean_message(entry.message)}")
        else:
            problems.append(f"line {entry.line}: {clean_message(entry.message, keep_element=True)}")
    if len(errors) > MAX_PROBLEMS:
        problems.append(f"... and {len(errors) - MAX_PROBLEMS} more")
    return problems


def validate_payload(xml: bytes) -> None:
    """Raise PayloadError unless `xml` is a well-formed request that validates against the XSD."""
    try:
        root = etree.fromstring(xml, xml_parser())
    except etree.XMLSyntaxError as exc:
        raise PayloadError(f"payload is not well-formed XML: line {exc.lineno}: {clean_message(exc.msg)}") from None
    problems = payload_problems(root)
    if problems:
        version = version_of(root)
        raise PayloadError(
            f"payload does not validate against {version.xsd_name if version else 'any interface version'} "
            f"({len(problems)} problem(s)):\n  "
            + "\n  ".join(problems), problems)


# --------------------------------------------------------------------------------------------------
# Building batches
# --------------------------------------------------------------------------------------------------


def _missing_check() -> Callable[[Any], bool]:
    import pandas as pd

    na, nat = pd.NA, pd.NaT

    def missing(v: Any) -> bool:
        return v is None or v is na or v is nat or (isinstance(v, float) and math.isnan(v))

    return missing


def _text(v: Any) -> str | None:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))  # an integer column widened to float by a missing value
    return str(v).strip() or None


def _date_text(v: Any) -> str | None:
    if isinstance(v, datetime):
        return v.date().isoformat()
    if isinstance(v, date):
        return v.isoformat()
    text = str(v).strip()
    if len(text) > 10 and text[10] in "T ":
        text = text[:10]
    return text or None


def _format_column(kind: str, series: pd.Series, missing: Callable[[Any], bool]) -> list[Any]:
    """A column's values as XML text (None = omitted); cpr_list as tuples of str."""
    values = series.tolist()
    if kind == "cpr_list":
        out: list[Any] = []
        for v in values:
            if v is None or (not isinstance(v, str | list | tuple) and missing(v)):
                out.append(None)
                continue
            items = [v] if isinstance(v, str) else list(v)
            cprs = tuple(t for t in (str(x).strip() for x in items if not missing(x)) if t)
            out.append(cprs or None)
        return out
    mask = series.isna().tolist()
    if kind == "date":
        return [None if m else v.isoformat() if type(v) is date else _date_text(v)
                for v, m in zip(values, mask, strict=True)]
    if kind == "hours":
        return [None if m else _format_hours(v) for v, m in zip(values, mask, strict=True)]
    if kind == "bool":
        return [None if m else _format_bool(v) for v, m in zip(values, mask, strict=True)]
    return [None if m else (v.strip() or None) if type(v) is str else _text(v)
            for v, m in zip(values, mask, strict=True)]


def _format_hours(v: Any) -> str:
    if isinstance(v, str):
        try:
            v = Decimal(v.strip())
        except ArithmeticError:
            return v.strip()  # left for validation to report
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, Decimal | int):
        return format(Decimal(v), ".2f")
    try:
        return format(float(v), ".2f")
    except (TypeError, ValueError):
        return str(v)


_TRUE = {"true", "1", "yes", "y", "ja", "j"}
_FALSE = {"false", "0", "no", "n", "nej"}


def _format_bool(v: Any) -> str:
    if isinstance(v, str):
        text = v.strip().lower()
        if text in _TRUE:
            return "true"
        if text in _FALSE:
            return "false"
        return v.strip()
    return "true" if bool(v) else "false"


def _datetime_text(created: datetime | None) -> str:
    moment = created or datetime.now(UTC)
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment.isoformat(timespec="seconds") + "Z"


def build_batch(
    area: Area | int | str,
    records: pd.DataFrame,
    *,
    batch_id: str,
    sender_municipality: str,
    run_id: str,
    created: datetime | None = None,
    version: InterfaceVersion | str = V1,
) -> bytes:
    """A SubmitBatchRequest for one area from a records frame (docs/architecture.md), as UTF-8 bytes.

    Rows with action ANNUL become Annulment elements; missing values (None/NaN/NaT) are omitted.
    The output is deterministic for a given `created`: pass the batch's stored creation time when a
    batch is rebuilt, since the receiver refuses a known batch id with different content (1030).
    The result is not validated here: call validate_payload. `version`: the interface version the batch
    is in (§ 49): its fields, elements and namespace; a batch is in exactly one version.
    """
    version = get_version(version)
    area = version.area(area if isinstance(area, Area) else get_area(area))
    for name in ("record_id", "action"):
        if name not in records.columns:
            raise PayloadError(f"records frame for {area.code} has no column {name!r}")
    missing = _missing_check()
    n = len(records)
    record_ids = [None if missing(v) else str(v).strip() for v in records["record_id"].tolist()]
    actions = [None if missing(v) else str(v).strip().upper() for v in records["action"].tolist()]
    bad_actions = sorted({str(a) for a in actions if a not in (ACTION_CREATE_OR_UPDATE, ACTION_ANNUL)})
    if bad_actions:
        raise PayloadError(f"records frame for {area.code}: unknown action(s) {', '.join(bad_actions)}; "
                           f"expected {ACTION_CREATE_OR_UPDATE} or {ACTION_ANNUL}")
    absent = [f.name for f in area.fields if f.name not in records.columns]
    if absent and any(a == ACTION_CREATE_OR_UPDATE for a in actions):
        raise PayloadError(f"records frame for {area.code} lacks field column(s): {', '.join(absent)}")

    specs: list[tuple[str, str | None, list[Any]]] = []
    for f in area.fields:
        if f.name in absent:
            continue
        column = _format_column(f.kind, records[f.name], missing)
        if f.kind == "cpr_list":
            specs.append((PERSONS_ELEMENT, f.element, column))
        else:
            specs.append((f.element, None, column))

    # The document is written as text, a column at a time (each value's element once per row, then a
    # row's elements joined), in exactly the bytes lxml's serialiser gives the same tree: lxml's escaping
    # for any value outside the plain characters (see xml_text), "\n" after the root's start tag, the
    # header and every record. tests/test_payload.py proves the bytes equal to an element-by-element
    # build with lxml.
    root_open = f'<SubmitBatchRequest xmlns="{version.namespace}">'
    header = "".join(f"<{tag}>{xml_text(text)}</{tag}>" for tag, text in (
        ("BatchIdentifier", batch_id),
        ("DataArea", str(area.number)),
        ("SenderMunicipalityCode", sender_municipality),
        ("RunIdentifier", run_id),
        ("CreatedDateTime", _datetime_text(created)),
        ("RecordCount", str(n)),
    ))
    no_id = next((i for i, rid in enumerate(record_ids) if rid is None), n)
    annul = [a == ACTION_ANNUL for a in actions]
    record_tag = area.record_element
    first_bad: tuple[int, int, str] | None = None  # (row, column, element) of the first value XML cannot carry
    parts: list[list[str]] = [[f"<{RECORD_ID_ELEMENT}>{xml_text(rid)}</{RECORD_ID_ELEMENT}>" if rid is not None
                               else "" for rid in record_ids]]
    for position, (tag, inner, column) in enumerate(specs):
        texts, bad = _element_texts(tag, inner, column, annul)
        parts.append(texts)
        if bad is not None and (first_bad is None or bad < first_bad[0]):
            first_bad = (bad, position, tag)
    if first_bad is not None and first_bad[0] < no_id:
        rid = record_ids[first_bad[0]]
        raise PayloadError(f"record {rid}: {first_bad[2]} holds characters that XML cannot carry "
                           "(control characters?)")
    if no_id < n:
        raise PayloadError(f"records frame for {area.code}: row {no_id + 1} has no record_id")
    open_record, close_record = f"<{record_tag}>", f"</{record_tag}>\n"
    rows = [open_record + body + close_record for body in map("".join, zip(*parts, strict=True))] if n else []
    annulment = f"<{ANNULMENT_ELEMENT}>{{}}</{ANNULMENT_ELEMENT}>\n"
    for i in (i for i, a in enumerate(annul) if a):
        rows[i] = annulment.format(parts[0][i])
    text = (f"<?xml version='1.0' encoding='UTF-8'?>\n{root_open}\n<BatchHeader>{header}</BatchHeader>\n"
            f"<Records>\n{''.join(rows)}</Records>\n</SubmitBatchRequest>")
    return text.encode("utf-8")


#: Characters lxml writes as they are in an element's text (no escaping, nothing it refuses): a value made
#: of these only is copied; any other value is escaped by lxml itself (xml_text).
_PLAIN_TEXT = re.compile("[\x20-\x25\x27-\x3b\x3d\x3f-\x7e\xa0-\ud7ff\ue000-\ufffd]*")


def xml_text(value: str) -> str:
    """`value` as lxml writes it in an element's text (&amp; &lt; &gt; &#13;, ...); ValueError for what
    XML cannot carry (control characters), as lxml raises it."""
    if _PLAIN_TEXT.fullmatch(value):
        return value
    element = etree.Element("v")
    element.text = value
    return etree.tostring(element, encoding="UTF-8").decode("utf-8")[3:-4]


def xml_texts(values: list[str]) -> list[str]:
    """`[xml_text(value) for value in values]`, in one scan of their text when every value is plain (the
    usual case: nothing to escape)."""
    if _PLAIN_TEXT.fullmatch("".join(values)):
        return values
    return [xml_text(value) for value in values]


def _element_texts(tag: str, inner: str | None, column: list[Any], skip: list[bool]) -> tuple[list[str], int | None]:
    """Each row's element of one column as text ("" when the value is missing; cpr_list: the wrapper with
    an `inner` element per person), and the first row (not skipped: annulments carry no fields) whose
    value XML cannot carry, or None."""
    open_, close = f"<{tag}>", f"</{tag}>"
    if inner is not None:
        open_inner, close_inner = f"<{inner}>", f"</{inner}>"
        flat = [item for value in column if value is not None for item in value]
    else:
        flat = [value for value in column if value is not None]
    if _PLAIN_TEXT.fullmatch("".join(flat)):  # the usual case: one scan of the whole column
        escape: Callable[[str], str] = str
        bad = None
    else:
        cache: dict[str, str | None] = {}

        def safe(value: str) -> str | None:
            if value not in cache:
                try:
                    cache[value] = xml_text(value)
                except ValueError:  # lxml refuses control characters and the like
                    cache[value] = None
            return cache[value]

        bad = next((i for i, value in enumerate(column) if value is not None and not skip[i] and (
            any(safe(item) is None for item in value) if inner is not None else safe(value) is None)), None)

        def escape(value: str) -> str:
            return safe(value) or ""

    if inner is None:
        if escape is str:
            return [open_ + value + close if value is not None else "" for value in column], bad
        return [open_ + escape(value) + close if value is not None else "" for value in column], bad
    return [(open_ + "".join(open_inner + escape(item) + close_inner for item in value) + close if value
             else f"<{tag}/>") if value is not None else "" for value in column], bad


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write (or check) schemas/ams-reporting-<version>.xsd and .wsdl")
    parser.add_argument("--check", action="store_true", help="exit 1 when the files differ from the registry")
    args = parser.parse_args(argv)
    if args.check:
        stale = [p for p, text in schema_files() if not p.exists() or p.read_text(encoding="utf-8") != text]
        for path in stale:
            print(f"{path} is out of date: run python -m transforms.payload", file=sys.stderr)
        return 1 if stale else 0
    for path in write_schema():
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
