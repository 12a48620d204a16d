"""What `forecast --remote` says it will take before it launches (automation/runs/forecast_estimate.py):
the rate it uses, row by row, and the sentence's sums. Through the CLI in tests/test_covariates_cli.py."""
from __future__ import annotations

import pytest

from automation.runs.forecast_estimate import A10G_SERIES_PER_SECOND, estimate, measured_rate, published_rate
from instance.protocol.pricing import hourly

RUN = "run-20261101-000000-abcd"


def _record(executor="ec2", instance_type="g5.xlarge", series=1000, seconds=4.0):
    return {"host": {"executor": executor, "instance_type": instance_type},
            "forecast": {"series": series, "seconds": seconds}}


@pytest.mark.parametrize("record, instance_type, local, rate", [
    (_record(), "g5.xlarge", False, 250.0),  # the model's own run, the same type: its figure
    (_record(), "g4dn.xlarge", False, None),  # another type: not comparable
    (_record(executor="local"), "g5.xlarge", True, 250.0),  # both on this machine
    (_record(executor="local"), "g5.xlarge", False, None),  # measured on a laptop, run on AWS
    (_record(), "g5.xlarge", True, None),  # measured on AWS, run here
    (_record(seconds=0), "g5.xlarge", False, None),
    ({"host": {"executor": "ec2", "instance_type": "g5.xlarge"}}, "g5.xlarge", False, None),  # forecast off
    (None, "g5.xlarge", False, None),
], ids=["same-type", "other-type", "both-local", "local-to-aws", "aws-to-local", "no-seconds", "no-forecast",
        "no-record"])
def test_the_measured_rate_is_used_only_where_this_run_will_run(record, instance_type, local, rate):
    assert measured_rate(record, instance_type, local) == rate


def test_published_rate_scales_with_the_gpu_and_a_smaller_model_up_to_10x():
    a10g = published_rate("g5.xlarge", "amazon/chronos-2")
    assert a10g == A10G_SERIES_PER_SECOND
    assert published_rate("g4dn.xlarge", "amazon/chronos-2") < a10g < published_rate("p4d.24xlarge", None)
    assert published_rate("g5.xlarge", "scratch:base") == a10g
    assert a10g < published_rate("g5.xlarge", "scratch:small") <= published_rate("g5.xlarge", "scratch:tiny")
    assert published_rate("g5.xlarge", "scratch:tiny") == 10 * a10g


def test_the_sentence_adds_the_start_to_the_forecast_and_prices_the_whole():
    price = hourly("g5.xlarge", True)
    est = estimate(90_000, "g5.xlarge", price, False, model_run=RUN, record=_record(), base="amazon/chronos-2")
    assert est.minutes == pytest.approx(3.0 + 90_000 / 250 / 60)  # 3 to start, 6 forecasting
    assert est.usd == pytest.approx(price * 9 / 60)
    text = est.sentence()
    assert text.startswith("estimate: 90,000 series in about 9.0 min (3.0 min to start the machine, 6.0 min "
                           f"forecasting at 250 series/s: {RUN}'s own forecast on g5.xlarge), about $")
    fallback = estimate(1000, "g4dn.xlarge", 0.5, False, model_run=RUN, record=None, base="amazon/chronos-2")
    assert "at 160 series/s: Chronos-2's published A10G figure scaled to T4)" in fallback.sentence()
    a10g = estimate(1000, "g5.xlarge", 0.5, False, model_run=RUN, record=None, base="amazon/chronos-2")
    assert "at 300 series/s: Chronos-2's published A10G figure)" in a10g.sentence()
    here = estimate(6, "g5.xlarge", price, True, model_run=RUN, record=_record(executor="local", series=6, seconds=0.1),
                    base="scratch:tiny")
    assert "under 0.1 min forecasting at 60 series/s" in here.sentence() and "$0.00 here (on AWS about $" in here.sentence()


def test_a_local_estimate_prices_aws_at_aws_s_start_and_gpu_speed_not_this_machine_s():
    """Here 90,000 series at this CPU's 60 series/s take 25 minutes; on a g5.xlarge the machine
    starts in 3 and forecasts them at the published 3,000 series/s of scratch:tiny in half a minute."""
    price = hourly("g5.xlarge", False)
    here = estimate(90_000, "g5.xlarge", price, True, model_run=RUN,
                    record=_record(executor="local", series=6, seconds=0.1), base="scratch:tiny")
    assert here.minutes == pytest.approx(0.1 + 25.0) and here.aws_usd == pytest.approx(price * 3.5 / 60)
    assert here.sentence().endswith(f"$0.00 here (on AWS about ${price * 3.5 / 60:.2f})")

