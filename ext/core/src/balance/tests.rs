//! The balancer's choices on small clusters (the Python reference comparisons are in
//! tests/property/test_decide_core.py).

use super::{Balancer, ClusterSpec, Host, Outlier, Policy, PyRandom};

fn cluster(policy: Policy, weights: &[u64], outlier: Option<Outlier>) -> ClusterSpec {
    let hosts: Vec<Host> = weights
        .iter()
        .enumerate()
        .map(|(i, w)| Host {
            key: format!("10.0.0.{i}:80"),
            weight: *w,
        })
        .collect();
    ClusterSpec {
        name: "c".into(),
        policy,
        outlier,
        panic_threshold: 50.0,
        ring_size: 64,
        maglev_table_size: 251,
        uniform: ClusterSpec::uniform_weights(&hosts),
        hosts,
    }
}

#[test]
fn round_robin_is_exact_and_weighted() {
    let mut b = Balancer::new(PyRandom::new(1));
    let c = cluster(Policy::RoundRobin, &[1, 1, 1], None);
    let picks: Vec<usize> = (0..6)
        .map(|_| b.pick(&c, None, || 0.0).expect("a host"))
        .collect();
    assert_eq!(picks, vec![1, 2, 0, 1, 2, 0]);
    let w = cluster(Policy::RoundRobin, &[3, 1], None);
    let mut counts = [0; 2];
    for _ in 0..400 {
        counts[b.pick(&w, None, || 0.0).expect("a host")] += 1;
    }
    assert_eq!(counts, [300, 100]);
}

#[test]
fn hash_policies_are_sticky() {
    for policy in [Policy::RingHash, Policy::Maglev] {
        let mut b = Balancer::new(PyRandom::new(2));
        let c = cluster(policy, &[1, 2, 1], None);
        let first: Vec<_> = (0..50u64)
            .map(|k| b.pick(&c, Some(k.wrapping_mul(0x9e37_79b9_7f4a_7c15)), || 0.0))
            .collect();
        let again: Vec<_> = (0..50u64)
            .map(|k| b.pick(&c, Some(k.wrapping_mul(0x9e37_79b9_7f4a_7c15)), || 0.0))
            .collect();
        assert_eq!(first, again);
        assert!((0..3).all(|i| first.contains(&Some(i))));
    }
}

#[test]
fn consecutive_failures_eject_within_max_percent_and_expire() {
    let od = Outlier {
        consecutive_5xx: 2,
        enforcing_consecutive_5xx: 100,
        consecutive_gateway_failure: 0,
        enforcing_consecutive_gateway_failure: 0,
        base_ejection_time: 10.0,
        max_ejection_time: 300.0,
        max_ejection_percent: 40.0,
    };
    let c = cluster(Policy::RoundRobin, &[1; 5], Some(od));
    let keys: Vec<&str> = c.hosts.iter().map(|h| h.key.as_str()).collect();
    let mut b = Balancer::new(PyRandom::new(3));
    let fail = |b: &mut Balancer, host: &str| {
        b.finished("c", Some(&od), host, Some(503), &keys, false, || 100.0)
    };
    assert!(!fail(&mut b, keys[0]));
    assert!(fail(&mut b, keys[0]));
    assert!(!fail(&mut b, keys[1]));
    assert!(fail(&mut b, keys[1])); // 2 of 5: 40%
    assert!(!fail(&mut b, keys[2]));
    assert!(!fail(&mut b, keys[2])); // a third would exceed max_ejection_percent
    assert_eq!(b.ejected("c", 100.0), vec![keys[0], keys[1]]);
    assert!((0..20).all(|_| b.pick(&c, None, || 105.0).expect("a host") >= 2));
    assert!(b.ejected("c", 110.0).is_empty());
}
