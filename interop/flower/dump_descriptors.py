"""Dump the Fleet API's protobuf descriptors from an installed flwr wheel.

Writes a FileDescriptorSet (fleet.proto and everything it imports, in dependency
order) that `crates/fedprompt-flower/build.rs` compiles with prost. Nothing is
hand-copied: the descriptors are the ones flwr itself was generated from.

    python interop/flower/dump_descriptors.py crates/fedprompt-flower/proto/flwr-1.42.0.fds.pb
"""

import sys

from google.protobuf import descriptor_pb2

import flwr
from flwr.proto import fleet_pb2


def collect(fd, seen, out):
    for dep in fd.dependencies:
        collect(dep, seen, out)
    if fd.name in seen:
        return
    seen.add(fd.name)
    proto = descriptor_pb2.FileDescriptorProto()
    fd.CopyToProto(proto)
    out.file.append(proto)


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    fds = descriptor_pb2.FileDescriptorSet()
    collect(fleet_pb2.DESCRIPTOR, set(), fds)
    data = fds.SerializeToString(deterministic=True)
    with open(sys.argv[1], "wb") as f:
        f.write(data)
    print(
        f"flwr {flwr.__version__}: {len(fds.file)} files, {len(data)} bytes -> {sys.argv[1]}:",
        ", ".join(f.name for f in fds.file),
    )


if __name__ == "__main__":
    main()
