"""A client on gRPC's C core (Python grpcio) against a hub and a spoke.

Called by tests/tests/interop.rs with a JSON file of addresses and paths; prints one
JSON object with what each server answered. The requests are raw protobuf bytes the
Rust side prepared (an empty StatusRequest; an envoy check-in signed with its Ed25519
key): what is tested here is that gRPC's C core completes TLS 1.3 with our P-256
certificates, in both directions, and speaks gRPC to our servers.
"""

import json
import sys

import grpc


def read(path):
    with open(path, "rb") as f:
        return f.read()


def call(address, ca, cert, key, method, request):
    credentials = grpc.ssl_channel_credentials(
        root_certificates=read(ca),
        private_key=read(key),
        certificate_chain=read(cert),
    )
    # Node certificates are issued for "localhost" and 127.0.0.1.
    options = [("grpc.ssl_target_name_override", "localhost")]
    with grpc.secure_channel(address, credentials, options=options) as channel:
        stub = channel.unary_unary(method)
        return stub(request, timeout=10)


def main():
    job = json.loads(read(sys.argv[1]))
    out = {"grpcio": grpc.__version__}
    status = call(
        job["hub"], job["ca"], job["admin_cert"], job["admin_key"],
        "/vigo.admin.v1.HubAdmin/Status", b"",
    )
    out["status"] = status.hex()
    check_in = call(
        job["spoke"], job["ca"], job["envoy_cert"], job["envoy_key"],
        "/vigo.v1.EnvoyGateway/CheckIn", bytes.fromhex(job["check_in"]),
    )
    out["check_in"] = check_in.hex()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
