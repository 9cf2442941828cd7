"""The operations the brokers let this client's principal do on topics and groups (KIP-430).

aiokafka's own Metadata request stops at v5, before Kafka added ``include_topic_authorized_operations``,
and its DescribeGroups v3 decodes the answer as v2, dropping the group's operations. Metadata v8
and DescribeGroups v3 are the last versions without the flexible encoding, so they are written here
with aiokafka's protocol types: request, response, and a :class:`Request` the connection negotiates
(a broker without them gets none: :class:`aiokafka.errors.IncompatibleBrokerVersion`).
"""

from __future__ import annotations

from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Array, Boolean, Bytes, Int16, Int32, Schema, String

#: what Kafka answers in an authorized-operations field it was not asked for or cannot tell
OPERATIONS_UNKNOWN = -(2**31)


class MetadataResponseV8(Response):
    """Kafka's MetadataResponse version 8 (brokers, topics with their authorized operations)."""

    API_KEY = 3
    API_VERSION = 8
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("brokers", Array(("node_id", Int32), ("host", String()), ("port", Int32), ("rack", String()))),
        ("cluster_id", String()),
        ("controller_id", Int32),
        (
            "topics",
            Array(
                ("error_code", Int16),
                ("name", String()),
                ("is_internal", Boolean),
                (
                    "partitions",
                    Array(
                        ("error_code", Int16),
                        ("partition_index", Int32),
                        ("leader_id", Int32),
                        ("leader_epoch", Int32),
                        ("replica_nodes", Array(Int32)),
                        ("isr_nodes", Array(Int32)),
                        ("offline_replicas", Array(Int32)),
                    ),
                ),
                ("topic_authorized_operations", Int32),
            ),
        ),
        ("cluster_authorized_operations", Int32),
    )


class MetadataRequestV8(RequestStruct):
    """Kafka's MetadataRequest version 8: named topics, never created by asking."""

    API_KEY = 3
    API_VERSION = 8
    RESPONSE_TYPE = MetadataResponseV8
    SCHEMA = Schema(
        ("topics", Array(String())),
        ("allow_auto_topic_creation", Boolean),
        ("include_cluster_authorized_operations", Boolean),
        ("include_topic_authorized_operations", Boolean),
    )


class AuthorizedOperationsRequest(Request[MetadataRequestV8]):
    """Metadata of ``topics`` with the operations the principal may do on each."""

    API_KEY = 3

    def __init__(self, topics: list[str]) -> None:
        self.topics = topics

    def build(self, request_struct_class: type[MetadataRequestV8]) -> MetadataRequestV8:
        return request_struct_class(self.topics, False, False, True)


def topic_operations(response: Response) -> dict[str, tuple[int, int]]:
    """``{topic: (error code, authorized-operations bit set)}`` of a :class:`MetadataResponseV8`."""
    topics = response.get_item("topics")
    return {str(topic[1]): (int(topic[0]), int(topic[4])) for topic in topics}


class DescribeGroupsResponseV3(Response):
    """Kafka's DescribeGroupsResponse version 3, with the group's authorized operations.

    (aiokafka's own v3 request decodes its answer as v2, which drops them.)
    """

    API_KEY = 15
    API_VERSION = 3
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "groups",
            Array(
                ("error_code", Int16),
                ("group_id", String()),
                ("group_state", String()),
                ("protocol_type", String()),
                ("protocol_data", String()),
                (
                    "members",
                    Array(
                        ("member_id", String()),
                        ("client_id", String()),
                        ("client_host", String()),
                        ("member_metadata", Bytes),
                        ("member_assignment", Bytes),
                    ),
                ),
                ("authorized_operations", Int32),
            ),
        ),
    )


class DescribeGroupsRequestV3(RequestStruct):
    """Kafka's DescribeGroupsRequest version 3."""

    API_KEY = 15
    API_VERSION = 3
    RESPONSE_TYPE = DescribeGroupsResponseV3
    SCHEMA = Schema(("groups", Array(String())), ("include_authorized_operations", Boolean))


class GroupOperationsRequest(Request[DescribeGroupsRequestV3]):
    """DescribeGroups of ``groups`` with the operations the principal may do on each."""

    API_KEY = 15

    def __init__(self, groups: list[str]) -> None:
        self.groups = groups

    def build(self, request_struct_class: type[DescribeGroupsRequestV3]) -> DescribeGroupsRequestV3:
        return request_struct_class(self.groups, True)


def group_operations(response: Response) -> dict[str, tuple[int, int]]:
    """``{group: (error code, authorized-operations bit set)}`` of a :class:`DescribeGroupsResponseV3`."""
    return {str(group[1]): (int(group[0]), int(group[6])) for group in response.get_item("groups")}
