//! The autoscaling simulation (`discovery autoscale`, docs/benchmarks.md)
//! models the HPAs the chart renders: the same services, minimum and
//! maximum pods, CPU targets, custom signals and targets, and behaviour
//! (seed 000's step and the chart's doubling, the scale-down window). A
//! change to the chart's values that the model does not follow fails here.

use discovery_harness::cluster::Chart;
use discovery_loadgen::autoscale::{Scaling, Signal, Step, chart_services};
use serde_json::{Value, json};

fn step(s: &Step) -> Value {
    match *s {
        Step::Pods(v, p) => json!({"type": "Pods", "value": v, "periodSeconds": p}),
        Step::Percent(v, p) => json!({"type": "Percent", "value": v, "periodSeconds": p}),
    }
}

#[test]
fn the_autoscaling_simulation_models_the_charts_hpas() {
    let chart = Chart::render("shop", &["autoscaling.customMetrics=true"]).expect("helm template");
    let hpas = chart.hpas();
    for svc in chart_services(Scaling::chart) {
        let hpa = hpas
            .get(svc.name)
            .unwrap_or_else(|| panic!("no HPA for {}", svc.name));
        let s = &svc.scaling;
        assert_eq!(hpa["minReplicas"], s.min, "{}", svc.name);
        assert_eq!(hpa["maxReplicas"], s.max, "{}", svc.name);
        let metrics = hpa["metrics"].as_array().unwrap();
        let cpu = metrics
            .iter()
            .find(|m| m["resource"]["name"] == "cpu")
            .expect("a CPU target");
        assert_eq!(
            cpu["resource"]["target"]["averageUtilization"].as_f64(),
            Some(svc.cpu_target * 100.0),
            "{}",
            svc.name
        );
        let pods = metrics
            .iter()
            .find(|m| m["type"] == "Pods")
            .expect("a custom signal");
        let (name, target) = match svc.signal {
            Signal::RatePerPod(x) => ("discovery_requests_per_second", x),
            Signal::InFlightPerPod(x) => ("discovery_calls_in_flight", x),
            Signal::SecondsPerCall(x) => ("discovery_face_analysis_seconds", x),
        };
        assert_eq!(pods["pods"]["metric"]["name"], name, "{}", svc.name);
        let value = pods["pods"]["target"]["averageValue"].as_str().unwrap();
        let value = match value.strip_suffix('m') {
            Some(milli) => milli.parse::<f64>().unwrap() / 1000.0,
            None => value.parse::<f64>().unwrap(),
        };
        assert_eq!(value, target, "{}", svc.name);
        let behavior = &hpa["behavior"];
        assert_eq!(
            behavior["scaleUp"]["policies"],
            Value::Array(s.up.iter().map(step).collect()),
            "{}",
            svc.name
        );
        assert_eq!(behavior["scaleUp"]["selectPolicy"], "Max");
        assert_eq!(
            behavior["scaleDown"]["policies"],
            Value::Array(s.down.iter().map(step).collect())
        );
        assert_eq!(
            behavior["scaleDown"]["stabilizationWindowSeconds"],
            s.down_window
        );
    }
}

/// The capacity forecast sizes its scenarios with the chart's minimum pods
/// and the gateway's per-pod target.
#[test]
fn the_forecasts_pod_counts_follow_the_chart() {
    use discovery_monitoring::forecast::{MIN_PODS, PER_POD};
    let chart = Chart::render("shop", &["autoscaling.customMetrics=true"]).expect("helm template");
    let hpas = chart.hpas();
    for (svc, min) in MIN_PODS {
        assert_eq!(hpas[svc]["minReplicas"], min, "{svc}");
    }
    let gateway = PER_POD.iter().find(|p| p.0 == "gateway").unwrap().1;
    let target = hpas["gateway"]["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["type"] == "Pods")
        .map(|m| {
            m["pods"]["target"]["averageValue"]
                .as_str()
                .unwrap()
                .parse::<f64>()
                .unwrap()
        });
    assert_eq!(target, Some(gateway));
}
