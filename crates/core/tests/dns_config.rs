//! The dns keys of `[[service]]`: parsed into `DnsConfig` with their defaults, refused where
//! they do not apply, with errors that say what would be valid; and the zone built from them.

use std::time::Duration;

use fulcrum_core::config::parse;

const POOL: &str = "[[pool]]\nname = \"web\"\n[[pool.backend]]\naddress = \"198.18.0.1:80\"\n\
                    [[pool]]\nname = \"api\"\n[[pool.backend]]\naddress = \"198.18.0.2:80\"\n";

fn svc(extra: &str) -> String {
    format!(
        "[[service]]\nname = \"dns\"\nlisten = \"127.0.0.1:5353\"\nprotocol = \"dns\"\npool = \"web\"\n{extra}\n{POOL}"
    )
}

fn err(text: &str) -> String {
    match parse(text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.render("f.toml", text),
    }
}

#[test]
fn the_issue_example_parses_with_defaults() {
    let cfg = parse(&svc(
        "[[service.dns_name]]\nname = \"WWW.Example.test.\"\npool = \"api\"\nttl = \"30s\"\nmax_answers = 4\n\
         [[service.dns_name]]\nname = \"img.example.test\"\n\
         [service.dns_zone]\norigin = \"example.test\"\nns = [\"ns1.example.test\"]\n",
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let d = cfg.services[0].dns().expect("dns");
    assert_eq!(d.origin, "example.test");
    assert_eq!(d.ns, vec!["ns1.example.test".to_owned()]);
    assert_eq!(
        d.names[0].name, "www.example.test",
        "lower case, no final dot"
    );
    assert_eq!(d.names[0].pool, "api");
    assert_eq!(d.names[1].pool, "web", "the service's pool by default");
    assert_eq!(d.names[1].ttl, Duration::from_secs(30));
    assert_eq!(d.names[1].max_answers.get(), 4);
    assert_eq!((d.rrl.responses_per_second.get(), d.rrl.slip), (100, 2));
    // The emitted table parses back to the same service (GET /api/v1/config).
    let again = fulcrum_core::config::service_table(&cfg.services[0]);
    let mut doc = toml::Table::new();
    doc.insert(
        "service".into(),
        toml::Value::Array(vec![toml::Value::Table(again)]),
    );
    let text = format!("{}\n{POOL}", fulcrum_core::config::table_to_string(&doc));
    let back = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(back.services[0], cfg.services[0]);
    let zone = fulcrum_core::dns::Zone::new(d, 7).expect("zone");
    assert_eq!(zone.pools(), ["api".to_owned(), "web".to_owned()]);
    // A pool only a dns name answers with is used by the service (not deletable).
    assert!(cfg.services[0].uses_pool("api") && cfg.services[0].uses_pool("web"));
    assert!(!cfg.services[0].uses_pool("other"));
}

#[test]
fn mistakes_are_refused_with_what_would_be_valid() {
    let zone = "[service.dns_zone]\norigin = \"example.test\"\nns = [\"ns1.example.test\"]\n";
    let e = err(&svc(""));
    assert!(e.contains("has no [service.dns_zone]"), "{e}");
    let e = err(&svc(&format!(
        "[[service.dns_name]]\nname = \"www.other.test\"\n{zone}"
    )));
    assert!(e.contains("not in the zone \"example.test\""), "{e}");
    let e = err(&svc(&format!(
        "[[service.dns_name]]\nname = \"bad name.example.test\"\n{zone}"
    )));
    assert!(e.contains("labels use letters"), "{e}");
    let e = err(&svc(&format!(
        "[[service.dns_name]]\nname = \"a.example.test\"\npool = \"nope\"\n{zone}"
    )));
    assert!(
        e.contains("pool `nope`") && e.contains("defined pools"),
        "{e}"
    );
    let e = err(&svc(&format!(
        "[[service.dns_name]]\nname = \"a.example.test\"\n[[service.dns_name]]\nname = \"A.example.test\"\n{zone}"
    )));
    assert!(e.contains("listed twice"), "{e}");
    let e = err(&svc(&format!(
        "[[service.dns_name]]\nname = \"a.example.test\"\nmax_answers = 65\n{zone}"
    )));
    assert!(e.contains("64"), "{e}");
    let e = err(&svc(&format!("{zone}[service.dns_rrl]\nslip = 11\n")));
    assert!(e.contains("slip 11") && e.contains("0 to 10"), "{e}");
    let e = err(&svc(
        "[service.dns_zone]\norigin = \"example.test\"\nns = []\n",
    ));
    assert!(e.contains("ns is empty"), "{e}");
    // dns keys on a tcp service; forward on a dns service.
    let e = err(&format!(
        "[[service]]\nname = \"t\"\nlisten = \"127.0.0.1:80\"\nprotocol = \"tcp\"\npool = \"web\"\n{zone}\n{POOL}"
    ));
    assert!(e.contains("applies only to dns services"), "{e}");
    let e = err(&svc(&format!("forward = \"dsr\"\n{zone}")));
    assert!(e.contains("works only for tcp and udp services"), "{e}");
}

#[test]
fn a_dns_service_takes_its_address_on_udp_and_tcp() {
    let zone = "[service.dns_zone]\norigin = \"example.test\"\nns = [\"ns1.example.test\"]\n";
    for other in ["udp", "tcp"] {
        let text = format!(
            "{}[[service]]\nname = \"o\"\nlisten = \"127.0.0.1:5353\"\nprotocol = \"{other}\"\npool = \"web\"\n{POOL}",
            svc(zone).replace(POOL, "")
        );
        let e = err(&text);
        assert!(e.contains("already uses"), "{other}: {e}");
    }
}
