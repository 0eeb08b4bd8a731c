"""How long `campaignflow validate` takes over 1,000 campaign files (schema + semantics, no DB).

Generates varied campaigns (SMS/LMS/Alimtalk, schedules, webhooks, lookups, advertising) in a
temporary project, then runs the real command several times and prints the median and spread.

    .venv/bin/python benchmarks/validate.py [--files 1000] [--runs 7]

Target: <= 1 s for 1,000 files on the development machine (2 cores).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CHANNELS = ["sms", "lms", "alimtalk"]
SCHEDULES = [
    '  schedule:\n    recurring: {{frequency: daily, time: "{h:02d}:{m:02d}"}}\n',
    '  schedule:\n    recurring: {{frequency: weekly, daysOfWeek: [mon, thu], time: "{h:02d}:{m:02d}"}}\n',
    '  schedule:\n    cron: "{m} {h} * * 1-5"\n    timezone: Asia/Seoul\n',
    "  manual: true\n",
]


def campaign(i: int) -> str:
    channel = CHANNELS[i % 3]
    h, m = 9 + i % 10, (i * 7) % 60
    cols = ", ".join(f"c.col_{i}_{k} AS v{k}" for k in range(i % 5))
    sql = (f"SELECT c.id AS customer_id, c.phone, c.company_name, c.company_id{', ' + cols if cols else ''}\n"
           f"    FROM customers c JOIN companies co ON co.id = c.company_id\n"
           f"    WHERE c.created_at > DATE_SUB(NOW(), INTERVAL {i % 90 + 1} DAY) AND co.tier = 'tier{i % 4}'")
    lookups = ("  lookups:\n    reviews:\n      sql: SELECT company_id, COUNT(*) AS review_count FROM reviews "
               f"WHERE company_id IN :keys AND rating >= {i % 5} GROUP BY company_id\n      on: company_id\n")
    if channel == "alimtalk":
        message = (f"message:\n  channel: alimtalk\n  text: |\n    #{{회사명}}님 안녕하세요. 리뷰 {i}건 이벤트 #{{리뷰수}}\n"
                   f"  alimtalk:\n    templateId: TK_{i}\n    variables:\n      \"#{{회사명}}\": \"{{{{ company_name }}}}\"\n"
                   f"      \"#{{리뷰수}}\": \"{{{{ review_count }}}}\"\n")
        policy = "policy: {purpose: informational}\n"
    else:
        ad = i % 2 == 0
        prefix = "(광고) 캠페인플로우 " if ad else ""
        body = "{{ company_name }}님, 리뷰 {{ review_count }}건 감사합니다." + (" 혜택 안내" * (i % 4))
        optout = "\n    무료수신거부 080-123-4567" if ad else ""
        message = f"message:\n  channel: {channel}\n  text: |\n    {prefix}{body}{optout}\n"
        policy = ("policy:\n  purpose: advertising\n  advertising: {sender: 캠페인플로우, optOut: 무료수신거부 080-123-4567}\n"
                  if ad else "policy: {purpose: informational}\n")
    return (f"apiVersion: campaignflow/v1\nkind: Campaign\nname: campaign_{i:05d}\nstatus: active\n"
            f"audience:\n  sql: |\n    {sql}\n  key: customer_id\n  phone: phone\n{lookups}"
            f"variables:\n  review_count: {{lookup: reviews.review_count, default: 0}}\n"
            f"{message}trigger:\n{SCHEDULES[i % 4].format(h=h, m=m)}{policy}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    exe = Path(sys.executable).parent / "campaignflow"
    with tempfile.TemporaryDirectory() as tmp:
        configs = Path(tmp) / "configs"
        (configs / "campaigns").mkdir(parents=True)
        shutil.copy(REPO / "configs" / "campaignflow.yaml", configs)
        for i in range(args.files):
            (configs / "campaigns" / f"campaign_{i:05d}.yaml").write_text(campaign(i), encoding="utf-8")
        first = subprocess.run([str(exe), "validate", "--format", "json"], cwd=tmp, capture_output=True, text=True)
        if first.returncode != 0:
            print(first.stdout[-3000:], first.stderr[-3000:])
            raise SystemExit("generated files do not validate; fix the generator")
        times, serial = [], []
        for _ in range(args.runs):  # interleaved, so both see the same machine noise
            start = time.perf_counter()
            subprocess.run([str(exe), "validate"], cwd=tmp, capture_output=True, check=True)
            times.append(time.perf_counter() - start)
            start = time.perf_counter()
            subprocess.run([str(exe), "validate", "--jobs", "1"], cwd=tmp, capture_output=True, check=True)
            serial.append(time.perf_counter() - start)
        startup = []
        for _ in range(args.runs):
            start = time.perf_counter()
            subprocess.run([str(exe), "--help"], cwd=tmp, capture_output=True, check=True)
            startup.append(time.perf_counter() - start)
    median = statistics.median(times)
    print(f"validate {args.files + 1} files: median {median:.3f} s over {args.runs} runs "
          f"(min {min(times):.3f}, max {max(times):.3f}); {median / (args.files + 1) * 1e3:.2f} ms/file")
    print(f"same with --jobs 1 (one process): median {statistics.median(serial):.3f} s; "
          f"workers speed-up x{statistics.median(serial) / median:.2f}")
    print(f"process start + CLI import (campaignflow --help): median {statistics.median(startup):.3f} s")
    print(f"target <= 1.0 s for 1,000 files: {'met' if median <= 1.0 else 'NOT met'}")


if __name__ == "__main__":
    main()
