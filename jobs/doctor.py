"""Check a cluster before its first nightly run: Ray resources per node, TensorFlow sees the GPUs (memory growth
on), one inference batch per inference actor with its images/s, the input readable (S3 or disk; a PACS reachable,
accepting the credentials, searchable and one instance retrieved) and the output writable (S3 or disk), DICOM decoders present on the workers, the model's sha256 matching its card, the pseudonym key present and
not the demo key.

    python -m jobs.doctor --input s3://pacs-export/ --output s3://screening/results
        --pseudonym-key-file /etc/mri-screen/pseudonym.key [--address ...]

Prints each check with its sentence and one JSON line; exit status 0 when every check that ran passed, 1 with one
plain sentence per failed check on stderr. Writes nothing but a probe file it removes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys

from infra.ray_runtime import configure_logging, configure_ray
from jobs.runner import POSITIVE_INT, HelpFormatter, add_common_options, add_dicomweb_options
from model.registry import DEFAULT_MODEL
from pipeline.doctor import DoctorConfig, run_checks

logger = logging.getLogger("jobs.doctor")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jobs.doctor", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--input", action="append", default=[],
                        help="the archive the nightly run reads: a folder, an S3 prefix, or a PACS's DICOMweb root "
                             "(dicomweb+https://host/dicom-web)")
    parser.add_argument("--output", help="the results folder or S3 prefix the nightly run writes")
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="model or registry folder (default: the shipped model, %(default)s)")
    parser.add_argument("--pseudonym-key-file", help="the key file the nightly run uses (else PSEUDONYM_KEY)")
    parser.add_argument("--inference-actors", type=POSITIVE_INT, help="as for jobs.screen")
    gpu = parser.add_mutually_exclusive_group()
    gpu.add_argument("--use-gpu", dest="use_gpu", action="store_true", default=None,
                     help="as for jobs.screen (default: when the cluster has GPUs)")
    gpu.add_argument("--no-gpu", dest="use_gpu", action="store_false", help="as for jobs.screen")
    add_dicomweb_options(parser.add_argument_group("PACS inputs"))
    add_common_options(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    configure_ray(args.address, verbose=args.verbose)
    checks = run_checks(DoctorConfig(tuple(args.input), args.output, args.model, args.pseudonym_key_file,
                                     args.inference_actors, args.use_gpu, args.dicomweb_credentials_file,
                                     args.dicomweb_ca_bundle))
    width = max(len(check.name) for check in checks)
    for check in checks:
        state = {True: "ok", False: "FAILED", None: "skipped"}[check.ok]
        logger.info("%-*s  %-7s %s", width, check.name, state, check.detail)
    failed = [check for check in checks if check.ok is False]
    for check in failed:
        print(f"{check.name}: {check.detail}", file=sys.stderr)
    print(json.dumps({"doctor": "ok" if not failed else "failed",
                      "checks": [dataclasses.asdict(check) for check in checks]}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
