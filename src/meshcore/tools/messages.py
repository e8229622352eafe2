"""Analysis messages in Istio's style: a stable code, a level and the resource it is about.

Codes ``IST0xxx`` are Istio's own where the meaning is the same; ``MC0xxx`` are meshcore's
(listed in the README's ``meshcore analyze`` section). A code never changes meaning.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshcore.config.model import Resource
from meshcore.errors import ConfigProblem

LEVELS = ("Info", "Warning", "Error")


@dataclass(frozen=True, slots=True)
class MessageType:
    code: str
    name: str
    level: str


# Istio's codes (istio.io/latest/docs/reference/config/analysis/).
REFERENCED_RESOURCE_NOT_FOUND = MessageType("IST0101", "ReferencedResourceNotFound", "Error")
SCHEMA_VALIDATION_ERROR = MessageType("IST0106", "SchemaValidationError", "Error")
UNKNOWN_ANNOTATION = MessageType("IST0108", "UnknownAnnotation", "Warning")
CONFLICTING_MESH_GATEWAY_VS_HOSTS = MessageType(
    "IST0109", "ConflictingMeshGatewayVirtualServiceHosts", "Error"
)
MTLS_POLICY_CONFLICT = MessageType("IST0113", "MTLSPolicyConflict", "Error")
NO_MATCHING_WORKLOADS = MessageType("IST0127", "NoMatchingWorkloadsFound", "Warning")
NO_SERVER_CERT_VERIFICATION_DR = MessageType(
    "IST0128", "NoServerCertificateVerificationDestinationLevel", "Warning"
)
VS_UNREACHABLE_RULE = MessageType("IST0130", "VirtualServiceUnreachableRule", "Warning")
VS_INEFFECTIVE_MATCH = MessageType("IST0131", "VirtualServiceIneffectiveMatch", "Info")
DR_SUBSET_NOT_SELECT_PODS = MessageType("IST0173", "DestinationRuleSubsetNotSelectPods", "Warning")
# meshcore's own codes.
TRANSLATION_WARNING = MessageType("MC0001", "TranslationWarning", "Warning")
UNREACHABLE_SUBSET = MessageType("MC0002", "UnreachableSubset", "Info")
AUTHZ_NEVER_MATCHES = MessageType("MC0003", "AuthorizationPolicyNeverMatches", "Warning")
AUTHZ_ALLOWS_NOTHING = MessageType("MC0004", "AuthorizationPolicyAllowsNothing", "Info")

ALL_TYPES = tuple(v for v in list(globals().values()) if isinstance(v, MessageType))


@dataclass(frozen=True, slots=True)
class Message:
    """One finding. ``resource`` is ``Kind namespace/name``; ``path`` a field path in it."""

    type: MessageType
    text: str
    kind: str = ""
    namespace: str = ""
    name: str = ""
    file: str = ""
    line: int = 0
    path: str = ""

    @property
    def code(self) -> str:
        return self.type.code

    @property
    def level(self) -> str:
        return self.type.level

    @property
    def resource(self) -> str:
        ident = f"{self.namespace}/{self.name}" if self.namespace else self.name
        return " ".join(p for p in (self.kind, ident) if p)

    def __str__(self) -> str:
        where = self.resource
        if self.file:
            where += f" {self.file}:{self.line}" if self.line else f" {self.file}"
        head = f"{self.level} [{self.code}]" + (f" ({where.strip()})" if where.strip() else "")
        body = f"{self.path}: {self.text}" if self.path else self.text
        return f"{head} {body}"

    def to_dict(self) -> dict[str, object]:
        """The stable JSON form (``meshcore analyze -o json``)."""
        return {
            "code": self.code, "level": self.level, "name": self.type.name,
            "kind": self.kind, "namespace": self.namespace, "resource_name": self.name,
            "file": self.file, "line": self.line, "path": self.path, "message": self.text,
        }  # fmt: skip


def about(kind: MessageType, res: Resource, text: str, path: str = "") -> Message:
    return Message(kind, text, res.kind, res.namespace, res.name, res.file, res.line, path)


def from_problem(kind: MessageType, p: ConfigProblem) -> Message:
    return Message(kind, p.message, p.kind, p.namespace, p.name, p.file, p.line, p.path)
