use super::*;
use std::time::Duration;

#[test]
fn an_end_cannot_be_serialized_by_another_format() {
    let (a, _b) = Pipe::pair().unwrap();
    let e = serde_json::to_string(&a).unwrap_err();
    assert!(
        e.to_string().contains("only be serialized by skprocess"),
        "{e}"
    );
}

#[test]
fn an_end_round_trips_through_wire_encoding() {
    let (tx, rx) = Pipe::one_way().unwrap();
    let enc = wire::encode(&rx).unwrap();
    drop(rx);
    let rx: PipeReceiver = wire::decode(&enc.bytes, enc.fds).unwrap();
    tx.send(&3u16).unwrap();
    assert_eq!(
        rx.recv_timeout::<u16>(Duration::from_secs(5)).unwrap(),
        Some(3)
    );
}

#[test]
fn an_end_with_unread_messages_refuses_to_move() {
    let (a, b) = Pipe::pair().unwrap();
    for i in 0..3u8 {
        a.send(&i).unwrap();
    }
    assert_eq!(
        b.recv_timeout::<u8>(Duration::from_secs(5)).unwrap(),
        Some(0)
    );
    match wire::encode(&b) {
        // The first receive read the others ahead: they would be lost.
        Err(e) => assert!(e.to_string().contains("receive them before moving"), "{e}"),
        // A transport that reads exactly one message at a time can move.
        Ok(enc) => {
            drop(b);
            let b: Pipe = wire::decode(&enc.bytes, enc.fds).unwrap();
            assert_eq!(
                b.recv_timeout::<u8>(Duration::from_secs(5)).unwrap(),
                Some(1)
            );
        }
    }
}
