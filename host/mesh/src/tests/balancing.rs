//! Load balancing over real backends: configured weights and draining with weight 0.

use super::*;

#[tokio::test]
async fn weights_are_honoured_over_real_backends_and_weight_zero_drains() {
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    let f = fixture(calm());
    let mut spec = service(
        "fc",
        "forecast",
        vec![a.instance(500), b.instance(300), c.instance(200)],
    );
    spec.lb = Some(LbKind::Weighted);
    f.mesh
        .register(spec.clone(), false)
        .await
        .expect("register");
    for _ in 0..1_000 {
        let response = send(&f.mesh, "fc").await.expect("proxied");
        text(response).await;
    }
    assert_eq!((a.hits(), b.hits(), c.hits()), (500, 300, 200));

    // Weight 0 drains c; a and b keep their state (same instance objects).
    let uid_a = f.mesh.service("fc").expect("fc").instances[0].uid;
    spec.instances[2].weight = 0;
    f.mesh.register(spec, true).await.expect("replace");
    assert_eq!(f.mesh.service("fc").expect("fc").instances[0].uid, uid_a);
    for _ in 0..800 {
        text(send(&f.mesh, "fc").await.expect("proxied")).await;
    }
    assert_eq!(c.hits(), 200, "a drained instance got traffic");
    assert_eq!((a.hits(), b.hits()), (1_000, 600));
}
