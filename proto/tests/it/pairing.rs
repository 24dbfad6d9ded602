//! Pairing conversations: enrolment on a connection without client certificate (and nothing
//! else there), renewal on an authenticated one.

use zrep_proto::{
    EnrollRequest, Enrolment, ErrorCode, Features, Message, ProtoError, ReceiverEvent,
    ReceiverSession, SenderEvent, SessionConfig, UsageError,
};

use crate::util::{Pair, config};

fn pairing_config() -> SessionConfig {
    let mut c = config();
    c.features = Features::new().with_enroll(true).with_renew(true);
    c
}

/// A pair whose receiver side has no client certificate to go by.
fn unauthenticated(sender: SessionConfig) -> Pair {
    let mut p = Pair::new(sender, pairing_config());
    p.r = ReceiverSession::new_pairing_only(pairing_config(), p.now);
    p
}

fn request() -> EnrollRequest {
    EnrollRequest {
        token_id: 42,
        proof: vec![1; 32],
        csr: vec![0x30, 1, 2, 3],
    }
}

#[test]
fn enrolment_then_bye() {
    let mut p = unauthenticated(pairing_config());
    let (ns, nr) = p.handshake();
    assert!(ns.enroll && nr.enroll && ns.renew);
    p.s.enroll(request()).unwrap();
    assert_eq!(p.r_next(), ReceiverEvent::EnrollRequested(request()));
    let enrolment = Enrolment {
        peer: "nas1".into(),
        root: "backup/nas1".into(),
        certificate: vec![1, 2, 3],
        ca_certificate: vec![4, 5, 6],
    };
    p.r.enrolled(enrolment.clone()).unwrap();
    assert_eq!(p.s_next(), SenderEvent::Enrolled(enrolment));
    p.s.close().unwrap();
    assert_eq!(p.r_next(), ReceiverEvent::Bye);
    assert!(p.r.is_closed());
}

#[test]
fn refused_enrolment_is_an_error_frame_with_the_reason() {
    let mut p = unauthenticated(pairing_config());
    p.handshake();
    p.s.enroll(request()).unwrap();
    p.r_next();
    p.r.refuse_enrollment("pairing token expired").unwrap();
    assert!(p.r.is_closed());
    assert_eq!(
        p.s_next(),
        SenderEvent::PeerError {
            code: ErrorCode::PairingRefused,
            message: "pairing token expired".into()
        }
    );
}

#[test]
fn without_certificate_only_pairing_is_allowed() {
    for attempt in 0..3 {
        let mut p = unauthenticated(pairing_config());
        p.handshake();
        match attempt {
            0 => p.s.request_state("tank/a").unwrap(),
            1 => p.s.renew(vec![1, 2]).unwrap(),
            _ => p.s.abort_resume("x").map_or((), |_| ()),
        }
        if attempt == 2 {
            // abort_resume is not negotiated here; push a raw control frame instead.
            let frame = zrep_proto::Frame::Control(Message::StateRequest { target: "x".into() });
            p.to_r.extend_from_slice(&frame.to_bytes().unwrap());
        }
        let err = p.r_event().unwrap_err();
        assert!(matches!(err, ProtoError::PairingOnly { .. }), "{err:?}");
        assert!(p.r.is_closed());
        match p.s_next() {
            SenderEvent::PeerError { code, message } => {
                assert_eq!(code, ErrorCode::NotAuthorized);
                assert!(message.contains("no client certificate"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn enrolment_needs_the_feature_and_an_unauthenticated_connection() {
    // Authenticated connection: enrolling is a protocol violation.
    let mut p = Pair::new(pairing_config(), pairing_config());
    p.handshake();
    p.s.enroll(request()).unwrap();
    assert!(matches!(
        p.r_event(),
        Err(ProtoError::Unexpected {
            frame: "Enroll",
            ..
        })
    ));

    // A sender that did not announce `enroll` cannot use it.
    let mut p = unauthenticated(config());
    p.handshake();
    assert!(matches!(
        p.s.enroll(request()),
        Err(UsageError::NotNegotiated { feature: "enroll" })
    ));
}

#[test]
fn renewal_on_an_authenticated_session() {
    let mut p = Pair::new(pairing_config(), pairing_config());
    p.handshake();
    p.s.renew(vec![7; 10]).unwrap();
    assert_eq!(
        p.r_next(),
        ReceiverEvent::RenewRequested { csr: vec![7; 10] }
    );
    p.r.renewed(vec![9; 5]).unwrap();
    assert_eq!(
        p.s_next(),
        SenderEvent::Renewed {
            certificate: vec![9; 5]
        }
    );
    // Refused renewal: the session goes on.
    p.s.renew(vec![7; 10]).unwrap();
    p.r_next();
    p.r.renew_refused("static peer").unwrap();
    assert_eq!(
        p.s_next(),
        SenderEvent::RenewRefused {
            message: "static peer".into()
        }
    );
    assert!(p.s.is_ready());
    p.s.request_state("a").unwrap();
    assert!(matches!(p.r_next(), ReceiverEvent::StateRequested { .. }));
}

#[test]
fn unsolicited_pairing_answers_are_violations() {
    let mut p = Pair::new(pairing_config(), pairing_config());
    p.handshake();
    let frame = zrep_proto::Frame::Pairing(zrep_proto::PairMessage::Renewed {
        certificate: vec![1],
    });
    p.to_s.extend_from_slice(&frame.to_bytes().unwrap());
    assert!(matches!(p.s_event(), Err(ProtoError::Unexpected { .. })));
}
