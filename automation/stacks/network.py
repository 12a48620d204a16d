"""Network of the persistent stack: free at rest, no inbound path to the instance."""
from __future__ import annotations

import pulumi
import pulumi_aws as aws

from .persistent_config import PersistentConfig

HTTPS = 443
ANYWHERE = "0.0.0.0/0"


class Network(pulumi.ComponentResource):
    """VPC with one public subnet per zone, routed to the internet gateway and to S3.

    Public subnets instead of private ones behind a NAT gateway: a NAT gateway bills by the hour
    (and an Elastic IP with it); the security group already refuses every inbound connection.
    S3 traffic takes the gateway endpoint, which is free and keeps it off the internet.
    """

    vpc_id: pulumi.Output[str]
    subnets: dict[str, pulumi.Output[str]]
    security_group_id: pulumi.Output[str]

    def __init__(self, name: str, cfg: PersistentConfig, zones: tuple[str, ...],
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("chronos:persistent:Network", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)

        vpc = aws.ec2.Vpc(
            f"{name}-vpc",
            cidr_block=cfg.vpc_cidr,
            enable_dns_support=True,
            enable_dns_hostnames=True,  # the S3 endpoint and SSM resolve by name
            tags={"Name": f"{name}-vpc"},
            opts=child,
        )
        igw = aws.ec2.InternetGateway(f"{name}-igw", vpc_id=vpc.id, tags={"Name": f"{name}-igw"}, opts=child)
        table = aws.ec2.RouteTable(f"{name}-public", vpc_id=vpc.id, tags={"Name": f"{name}-public"}, opts=child)
        aws.ec2.Route(
            f"{name}-default-route",
            route_table_id=table.id,
            destination_cidr_block=ANYWHERE,
            gateway_id=igw.id,
            opts=child,
        )

        # Every zone gets a subnet so a launch can move to another zone when one has no capacity
        # for a GPU type; subnets cost nothing.
        self.subnets = {}
        for zone, cidr in cfg.subnet_cidrs(zones).items():
            subnet = aws.ec2.Subnet(
                f"{name}-{zone}",
                vpc_id=vpc.id,
                availability_zone=zone,
                cidr_block=cidr,
                map_public_ip_on_launch=True,  # reach the internet without a NAT gateway
                tags={"Name": f"{name}-{zone}"},
                opts=child,
            )
            aws.ec2.RouteTableAssociation(f"{name}-{zone}", subnet_id=subnet.id, route_table_id=table.id,
                                          opts=child)
            self.subnets[zone] = subnet.id

        aws.ec2.VpcEndpoint(
            f"{name}-s3",
            vpc_id=vpc.id,
            service_name=f"com.amazonaws.{cfg.region}.s3",
            vpc_endpoint_type="Gateway",
            route_table_ids=[table.id],
            tags={"Name": f"{name}-s3"},
            opts=child,
        )

        group = aws.ec2.SecurityGroup(
            f"{name}-instance",
            vpc_id=vpc.id,
            description="Chronos training instances: nothing inbound, HTTPS outbound only",
            ingress=[],
            egress=[aws.ec2.SecurityGroupEgressArgs(
                description="HTTPS to S3, EC2 and the model hub",
                protocol="tcp",
                from_port=HTTPS,
                to_port=HTTPS,
                cidr_blocks=[ANYWHERE],
            )],
            tags={"Name": f"{name}-instance"},
            opts=child,
        )
        # Managing the VPC's default group with no rules removes the allow-all rules AWS puts
        # there, so nothing launched into it by mistake is reachable (FSBP EC2.2).
        aws.ec2.DefaultSecurityGroup(
            f"{name}-default", vpc_id=vpc.id, ingress=[], egress=[], tags={"Name": f"{name}-default"}, opts=child
        )

        self.vpc_id = vpc.id
        self.security_group_id = group.id
        self.register_outputs({"vpc_id": vpc.id, "subnets": self.subnets, "security_group_id": group.id})
