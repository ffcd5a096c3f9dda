//! Round-trip and malformed-input tests of the codec.

use bytes::Bytes;
use lockbroker_proto::*;
use proptest::prelude::*;

fn roundtrip(f: &Frame) {
    let mut buf = Vec::new();
    encode(f, &mut buf);
    let (back, n) = decode(&buf, &Limits::default())
        .expect("decodes")
        .expect("whole frame");
    assert_eq!(n, buf.len());
    assert_eq!(&back, f);
    // Every strict prefix is "not yet".
    for cut in 0..buf.len() {
        assert_eq!(
            decode(&buf[..cut], &Limits::default()),
            Ok(None),
            "prefix {cut}"
        );
    }
}

fn samples() -> Vec<Frame> {
    let key = Bytes::from_static(b"jobs/nightly");
    vec![
        Frame::Hello(Hello {
            token: Some("secret".into()),
            client: "test".into(),
        }),
        Frame::Hello(Hello {
            token: None,
            client: String::new(),
        }),
        Frame::Welcome(Welcome {
            session: 7,
            broker_id: 0x1234_5678_9abc_def0,
            epoch: 3,
            max_frame: 65536,
            max_key: 1024,
            default_ttl_ms: 30_000,
            principal: "anonymous".into(),
        }),
        Frame::Acquire(Acquire {
            id: 1,
            key: key.clone(),
            mode: Mode::Exclusive,
            ttl_ms: 30_000,
            wait: WaitSpec::NoWait,
            owner: Bytes::new(),
            ticket: 0,
            fence_block: 1,
        }),
        Frame::Acquire(Acquire {
            id: 2,
            key: key.clone(),
            mode: Mode::Semaphore(4),
            ttl_ms: 0,
            wait: WaitSpec::Millis(5000),
            owner: Bytes::new(),
            ticket: 0,
            fence_block: 1,
        }),
        Frame::Acquire(Acquire {
            id: 3,
            key: key.clone(),
            mode: Mode::Shared,
            ttl_ms: 1,
            wait: WaitSpec::Forever,
            owner: Bytes::new(),
            ticket: 0xfeed_beef_0000_0001,
            fence_block: u32::MAX,
        }),
        Frame::Granted(Granted {
            id: 1,
            fence: u64::MAX,
            ttl_ms: 10,
            rewritten: None,
            secret: LeaseSecret([0xab; 16]),
            fence_block: 1,
        }),
        Frame::Granted(Granted {
            id: 1,
            fence: 9,
            ttl_ms: 10,
            rewritten: Some(Bytes::from_static(b"tenant/a/jobs")),
            secret: LeaseSecret([7; 16]),
            fence_block: 64,
        }),
        Frame::Release(Release {
            id: 4,
            key: key.clone(),
            fence: 9,
            ack: true,
            secret: LeaseSecret([1; 16]),
        }),
        Frame::Extend(Extend {
            id: 5,
            key: key.clone(),
            fence: 9,
            ttl_ms: 100,
            secret: LeaseSecret([2; 16]),
        }),
        Frame::Extended { id: 5, ttl_ms: 100 },
        Frame::Reclaim(Reclaim {
            id: 6,
            key: key.clone(),
            fence: 9,
            mode: Mode::Semaphore(3),
            ttl_ms: 100,
            secret: LeaseSecret([2; 16]),
            owner: Bytes::new(),
        }),
        Frame::Ok { id: 4 },
        Frame::Inspect {
            id: 8,
            key: key.clone(),
        },
        Frame::LockInfo(LockInfo {
            id: 8,
            key: key.clone(),
            holders: vec![
                HolderInfo {
                    session: 1,
                    fence: 2,
                    mode: Mode::Shared,
                    remaining_ms: 3,
                    owner: Bytes::new(),
                    cached: false,
                },
                HolderInfo {
                    session: 4,
                    fence: 5,
                    mode: Mode::Semaphore(2),
                    remaining_ms: 6,
                    owner: Bytes::new(),
                    cached: false,
                },
            ],
            holders_total: 2,
            waiters: 3,
            blocked_ms: 0,
            position: 0,
        }),
        // A truncated list: more holders than listed.
        Frame::LockInfo(LockInfo {
            id: 8,
            key: key.clone(),
            holders: vec![HolderInfo {
                session: 1,
                fence: 2,
                mode: Mode::Shared,
                remaining_ms: 3,
                owner: Bytes::new(),
                cached: false,
            }],
            holders_total: 3000,
            waiters: 0,
            blocked_ms: 7,
            position: 0,
        }),
        Frame::WaitUnlocked {
            id: 9,
            key,
            wait: WaitSpec::Forever,
        },
        Frame::Unlocked {
            id: 9,
            outcome: UnlockOutcome::Expired,
        },
        Frame::Unlocked {
            id: 9,
            outcome: UnlockOutcome::Released,
        },
        Frame::Cancel { id: 10 },
        Frame::Ping { id: 11 },
        Frame::Pong { id: 11 },
        Frame::error(12, ErrorCode::NotOwner, "lease 9 is not yours"),
        Frame::error(0, ErrorCode::Unknown(777), "from the future"),
        Frame::error(13, ErrorCode::Moved, "quic://127.0.0.1:7421"),
        Frame::error(14, ErrorCode::Requeued, "00000000deadbeef"),
        Frame::Recall {
            key: Bytes::from_static(b"cache/k"),
            fence: 41,
        },
        Frame::LeaseEnded {
            key: Bytes::from_static(b"jobs/nightly"),
            fence: 9,
            reason: EndReason::Mirror,
            message: "held in Redis".into(),
        },
        Frame::LeaseEnded {
            key: Bytes::from_static(b"k"),
            fence: 10,
            reason: EndReason::Expired,
            message: String::new(),
        },
        Frame::ShardMap(ShardMap {
            version: 42,
            shards: 64,
            owners: vec![
                ShardOwner {
                    shard: 0,
                    url: "quic://127.0.0.1:7420".into(),
                },
                ShardOwner {
                    shard: 63,
                    url: "quic://[::1]:7421".into(),
                },
            ],
        }),
    ]
}

#[test]
fn every_frame_kind_round_trips() {
    for f in samples() {
        roundtrip(&f);
    }
}

#[test]
fn many_frames_in_one_buffer_decode_in_order() {
    let frames = samples();
    let mut buf = Vec::new();
    for f in &frames {
        encode(f, &mut buf);
    }
    let mut at = 0;
    let mut got = Vec::new();
    while let Some((f, n)) = decode(&buf[at..], &Limits::default()).unwrap() {
        got.push(f);
        at += n;
    }
    assert_eq!(at, buf.len());
    assert_eq!(got, frames);
}

#[test]
fn oversized_frame_is_refused_from_its_length_prefix() {
    let limits = Limits::default();
    let huge = (limits.max_frame as u32).to_le_bytes();
    assert_eq!(
        decode(&huge, &limits),
        Err(DecodeError::FrameTooLarge {
            size: limits.max_frame + 4,
            limit: limits.max_frame
        })
    );
}

#[test]
fn oversized_key_is_refused() {
    let mut buf = Vec::new();
    encode(
        &Frame::Acquire(Acquire {
            id: 1,
            key: Bytes::from(vec![b'k'; 2000]),
            mode: Mode::Exclusive,
            ttl_ms: 0,
            wait: WaitSpec::NoWait,
            owner: Bytes::new(),
            ticket: 0,
            fence_block: 1,
        }),
        &mut buf,
    );
    let err = decode(&buf, &Limits::default()).unwrap_err();
    assert_eq!(
        err,
        DecodeError::KeyTooLarge {
            size: 2000,
            limit: 1024
        }
    );
    assert_eq!(err.code(), ErrorCode::KeyTooLarge);
    // A configured, larger limit accepts it.
    let wide = Limits {
        max_frame: 64 * 1024,
        max_key: 4096,
    };
    assert!(decode(&buf, &wide).unwrap().is_some());
}

#[test]
fn unknown_version_is_refused_before_the_body_arrives() {
    let buf = [10, 0, 0, 0, 9];
    assert_eq!(
        decode(&buf, &Limits::default()),
        Err(DecodeError::UnsupportedVersion {
            got: 9,
            supported: PROTOCOL_VERSION
        })
    );
}

#[test]
fn unknown_kind_trailing_bytes_and_truncation_are_malformed() {
    let limits = Limits::default();
    assert_eq!(
        decode(&[2, 0, 0, 0, PROTOCOL_VERSION, 200], &limits),
        Err(DecodeError::UnknownKind(200))
    );
    // Ping with one extra byte.
    let mut buf = Vec::new();
    encode(&Frame::Ping { id: 1 }, &mut buf);
    buf.push(0);
    buf[0] += 1;
    assert_eq!(
        decode(&buf, &limits),
        Err(DecodeError::Malformed("trailing bytes"))
    );
    // Ping with a length that ends inside the id.
    let buf = [5, 0, 0, 0, PROTOCOL_VERSION, 15, 1, 2, 3];
    assert!(matches!(
        decode(&buf, &limits),
        Err(DecodeError::Malformed(_))
    ));
    // Length shorter than the header.
    assert!(matches!(
        decode(&[1, 0, 0, 0, PROTOCOL_VERSION], &limits),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn lying_counts_and_bad_tags_are_malformed() {
    let limits = Limits::default();
    let mut buf = Vec::new();
    encode(
        &Frame::LockInfo(LockInfo {
            id: 1,
            key: Bytes::from_static(b"k"),
            holders: vec![],
            holders_total: 0,
            waiters: 0,
            blocked_ms: 0,
            position: 0,
        }),
        &mut buf,
    );
    // Holder count sits after len(4) ver(1) kind(1) id(8) keylen(4) key(1).
    let mut lying = buf.clone();
    lying[19..23].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(
        decode(&lying, &limits),
        Err(DecodeError::Malformed("holder count"))
    );
    // A total below the holders listed: one holder, total 0.
    let mut buf = Vec::new();
    encode(
        &Frame::LockInfo(LockInfo {
            id: 1,
            key: Bytes::from_static(b"k"),
            holders: vec![holder(1, Mode::Exclusive)],
            holders_total: 1,
            waiters: 0,
            blocked_ms: 0,
            position: 0,
        }),
        &mut buf,
    );
    // Holders total sits after the holder count(4) and one 29-byte holder (no owner label).
    buf[52..56].copy_from_slice(&0u32.to_le_bytes());
    assert_eq!(
        decode(&buf, &limits),
        Err(DecodeError::Malformed(
            "holders total below the holders listed"
        ))
    );

    let mut buf = Vec::new();
    encode(
        &Frame::Acquire(Acquire {
            id: 1,
            key: Bytes::from_static(b"k"),
            mode: Mode::Exclusive,
            ttl_ms: 0,
            wait: WaitSpec::NoWait,
            owner: Bytes::new(),
            ticket: 0,
            fence_block: 1,
        }),
        &mut buf,
    );
    buf[19] = 7; // mode tag
    assert_eq!(decode(&buf, &limits), Err(DecodeError::Malformed("mode")));
}

fn holder(fence: u64, mode: Mode) -> HolderInfo {
    HolderInfo {
        session: fence % 7,
        fence,
        mode,
        remaining_ms: 30_000,
        owner: Bytes::new(),
        cached: false,
    }
}

/// 3,000 holders of mixed modes (semaphore holders take 4 bytes more) on a 40-byte key.
fn wide_lock_info() -> LockInfo {
    let holders: Vec<HolderInfo> = (1..=3000)
        .map(|f| {
            let mode = if f % 3 == 0 {
                Mode::Semaphore(5000)
            } else {
                Mode::Shared
            };
            holder(f, mode)
        })
        .collect();
    LockInfo {
        id: 42,
        key: Bytes::from(vec![b'w'; 40]),
        holders_total: holders.len() as u32,
        holders,
        waiters: 9,
        blocked_ms: 0,
        position: 0,
    }
}

fn encoded(f: &Frame) -> Vec<u8> {
    let mut buf = Vec::new();
    encode(f, &mut buf);
    buf
}

#[test]
fn lock_info_knows_its_encoded_length() {
    let mut info = wide_lock_info();
    for n in [3000, 17, 1, 0] {
        info.holders.truncate(n);
        assert_eq!(
            info.encoded_len(),
            encoded(&Frame::LockInfo(info.clone())).len(),
            "{n} holders"
        );
    }
}

#[test]
fn a_lock_info_too_large_for_the_frame_limit_is_truncated_to_fit_with_its_total() {
    let limits = Limits::default();
    let full = wide_lock_info();
    // Untruncated, it is over the limit and refused.
    assert!(full.encoded_len() > limits.max_frame);
    assert!(matches!(
        decode(&encoded(&Frame::LockInfo(full.clone())), &limits),
        Err(DecodeError::FrameTooLarge { .. })
    ));
    // A larger limit takes it whole.
    let wide = Limits {
        max_frame: 1 << 20,
        ..limits
    };
    let mut whole = full.clone();
    assert!(whole.truncate_to(wide.max_frame));
    assert_eq!(whole, full);
    let (back, _) = decode(&encoded(&Frame::LockInfo(whole.clone())), &wide)
        .unwrap()
        .unwrap();
    assert_eq!(back, Frame::LockInfo(whole));

    // Truncated: the longest prefix that fits, the total kept, and it round-trips.
    let mut cut = full.clone();
    assert!(cut.truncate_to(limits.max_frame));
    let n = cut.holders.len();
    assert!(n > 0 && n < full.holders.len(), "{n}");
    assert_eq!(cut.holders[..], full.holders[..n]);
    assert_eq!(cut.holders_total, 3000);
    assert!(cut.encoded_len() <= limits.max_frame);
    assert!(cut.encoded_len() + full.holders[n].encoded_len() > limits.max_frame);
    let bytes = encoded(&Frame::LockInfo(cut.clone()));
    assert!(bytes.len() <= limits.max_frame);
    let (back, used) = decode(&bytes, &limits).unwrap().unwrap();
    assert_eq!(used, bytes.len());
    assert_eq!(back, Frame::LockInfo(cut));
}

#[test]
fn a_lock_info_whose_key_alone_is_too_large_does_not_fit() {
    let mut info = wide_lock_info();
    assert!(!info.truncate_to(50));
    assert!(info.holders.is_empty());
    assert_eq!(info.holders_total, 3000);
    // Exactly the fixed part and the key: fits, with no holders.
    let mut info = wide_lock_info();
    info.holders.clear();
    let bare = info.encoded_len();
    let mut info = wide_lock_info();
    assert!(info.truncate_to(bare));
    assert!(info.holders.is_empty());
}

#[test]
fn frame_head_reads_the_length_and_the_request_id_without_decoding() {
    // An oversized answer: its head is there long before its body.
    let big = encoded(&Frame::error(77, ErrorCode::Busy, "x".repeat(70_000)));
    let head = FrameHead {
        total: big.len(),
        id: Some(77),
    };
    for cut in 0..FRAME_HEAD_LEN {
        assert_eq!(frame_head(&big[..cut]), None, "{cut} bytes");
    }
    assert_eq!(frame_head(&big[..FRAME_HEAD_LEN]), Some(head));
    assert_eq!(frame_head(&big), Some(head));
    // Every answer kind has its id up front.
    for f in samples() {
        let bytes = encoded(&f);
        let id = match f {
            Frame::Hello(_)
            | Frame::Welcome(_)
            | Frame::LeaseEnded { .. }
            | Frame::ShardMap(_)
            | Frame::Recall { .. } => None,
            ref other => Some(other.id()),
        };
        assert_eq!(
            frame_head(&bytes),
            Some(FrameHead {
                total: bytes.len(),
                id
            }),
            "{f:?}"
        );
    }
    // No id: an unknown kind, another version, a frame too short to hold one.
    assert_eq!(
        frame_head(&[10, 0, 0, 0, PROTOCOL_VERSION, 200, 1, 0, 0, 0, 0, 0, 0, 0]),
        Some(FrameHead {
            total: 14,
            id: None
        })
    );
    let mut other_version = encoded(&Frame::Ping { id: 3 });
    other_version[4] = PROTOCOL_VERSION + 1;
    assert_eq!(frame_head(&other_version).and_then(|h| h.id), None);
    assert_eq!(
        frame_head(&[0, 0, 0, 0]),
        Some(FrameHead { total: 4, id: None })
    );
    assert_eq!(
        frame_head(&[5, 0, 0, 0, PROTOCOL_VERSION, 15, 1, 2, 3]),
        Some(FrameHead { total: 9, id: None })
    );
}

#[test]
fn fatal_codes_are_the_connection_level_ones() {
    assert!(ErrorCode::Malformed.is_fatal());
    assert!(ErrorCode::UnsupportedVersion.is_fatal());
    assert!(!ErrorCode::Busy.is_fatal());
    for v in 0..200u16 {
        assert_eq!(ErrorCode::from_u16(v).to_u16(), v);
    }
}

fn arb_mode() -> impl Strategy<Value = Mode> {
    prop_oneof![
        Just(Mode::Exclusive),
        Just(Mode::Shared),
        any::<u32>().prop_map(Mode::Semaphore)
    ]
}

fn arb_wait() -> impl Strategy<Value = WaitSpec> {
    prop_oneof![
        Just(WaitSpec::NoWait),
        Just(WaitSpec::Forever),
        any::<u64>().prop_map(WaitSpec::Millis)
    ]
}

fn arb_key() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from)
}

fn arb_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (
            any::<u64>(),
            arb_key(),
            arb_mode(),
            any::<u64>(),
            arb_wait()
        )
            .prop_map(|(id, key, mode, ttl_ms, wait)| Frame::Acquire(Acquire {
                id,
                key,
                mode,
                ttl_ms,
                wait,
                owner: Bytes::new(),
                ticket: 0,
                fence_block: 1,
            })),
        (
            any::<u64>(),
            arb_key(),
            any::<u64>(),
            any::<bool>(),
            any::<[u8; 16]>()
        )
            .prop_map(|(id, key, fence, ack, secret)| {
                Frame::Release(Release {
                    id,
                    key,
                    fence,
                    ack,
                    secret: LeaseSecret(secret),
                })
            }),
        (
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            proptest::option::of(arb_key()),
            any::<[u8; 16]>()
        )
            .prop_map(
                |(id, fence, ttl_ms, rewritten, secret)| Frame::Granted(Granted {
                    id,
                    fence,
                    ttl_ms,
                    rewritten,
                    secret: LeaseSecret(secret),
                    fence_block: 1,
                })
            ),
        (any::<u64>(), any::<u16>(), ".{0,40}").prop_map(|(id, c, m)| Frame::error(
            id,
            ErrorCode::from_u16(c),
            m
        )),
        (any::<u64>(), arb_key(), arb_wait()).prop_map(|(id, key, wait)| Frame::WaitUnlocked {
            id,
            key,
            wait
        }),
        arb_lock_info().prop_map(Frame::LockInfo),
    ]
}

fn arb_lock_info() -> impl Strategy<Value = LockInfo> {
    (
        any::<u64>(),
        arb_key(),
        proptest::collection::vec(
            (
                any::<u64>(),
                any::<u64>(),
                arb_mode(),
                any::<u64>(),
                any::<bool>(),
            ),
            0..64,
        ),
        any::<u32>(),
        any::<u64>(),
    )
        .prop_map(|(id, key, holders, waiters, blocked_ms)| {
            let holders: Vec<HolderInfo> = holders
                .into_iter()
                .map(|(session, fence, mode, remaining_ms, cached)| HolderInfo {
                    session,
                    fence,
                    mode,
                    remaining_ms,
                    owner: Bytes::new(),
                    cached,
                })
                .collect();
            LockInfo {
                id,
                key,
                holders_total: holders.len() as u32,
                holders,
                waiters,
                blocked_ms,
                position: 0,
            }
        })
}

proptest! {
    #[test]
    fn arbitrary_frames_round_trip(f in arb_frame()) {
        roundtrip(&f);
    }

    #[test]
    fn a_truncated_lock_info_fits_its_limit_and_round_trips(
        info in arb_lock_info(),
        max_frame in 0usize..2500,
    ) {
        let total = info.holders_total;
        let mut cut = info.clone();
        let fits = cut.truncate_to(max_frame);
        prop_assert_eq!(cut.holders_total, total);
        prop_assert_eq!(&cut.holders[..], &info.holders[..cut.holders.len()]);
        let bytes = encoded(&Frame::LockInfo(cut.clone()));
        prop_assert_eq!(bytes.len(), cut.encoded_len());
        if fits {
            prop_assert!(bytes.len() <= max_frame);
            if let Some(next) = info.holders.get(cut.holders.len()) {
                prop_assert!(bytes.len() + next.encoded_len() > max_frame);
            }
            let limits = Limits { max_frame, max_key: 64 };
            let (back, _) = decode(&bytes, &limits).unwrap().unwrap();
            prop_assert_eq!(back, Frame::LockInfo(cut));
        } else {
            prop_assert!(cut.holders.is_empty());
            prop_assert!(bytes.len() > max_frame);
        }
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode(&bytes, &Limits::default());
    }

    #[test]
    fn corrupted_frames_never_panic(f in arb_frame(), at in any::<usize>(), b in any::<u8>()) {
        let mut buf = Vec::new();
        encode(&f, &mut buf);
        let i = at % buf.len();
        buf[i] = b;
        let _ = decode(&buf, &Limits::default());
    }
}

/// Owner labels travel in `Acquire`, `Reclaim` and `LockInfo`; one longer than
/// `MAX_OWNER_LABEL` or not UTF-8 is refused with a clear error.
#[test]
fn owner_labels_round_trip_and_are_bounded() {
    let limits = Limits::default();
    let acquire = |owner: &[u8]| {
        Frame::Acquire(Acquire {
            id: 3,
            key: Bytes::from_static(b"k"),
            mode: Mode::Exclusive,
            ttl_ms: 0,
            wait: WaitSpec::NoWait,
            owner: Bytes::copy_from_slice(owner),
            ticket: 0,
            fence_block: 1,
        })
    };
    let mut buf = Vec::new();
    let labelled = acquire(b"worker-7@host-3");
    encode(&labelled, &mut buf);
    assert_eq!(decode(&buf, &limits), Ok(Some((labelled, buf.len()))));
    let mut info = LockInfo {
        id: 1,
        key: Bytes::from_static(b"k"),
        holders: vec![holder(1, Mode::Exclusive)],
        holders_total: 1,
        waiters: 0,
        blocked_ms: 0,
        position: 0,
    };
    info.holders[0].owner = Bytes::from_static(b"api@10.0.0.7");
    let mut buf = Vec::new();
    encode(&Frame::LockInfo(info.clone()), &mut buf);
    assert_eq!(buf.len(), info.encoded_len());
    assert_eq!(
        decode(&buf, &limits),
        Ok(Some((Frame::LockInfo(info), buf.len())))
    );
    // Issue 23 finding 10: a label is shown on terminals; what a terminal acts on is refused.
    for forged in [
        &b"me\nroot / ops-approved"[..],
        b"\x1b]0;pwned\x07",
        "a\u{202E}b".as_bytes(),
    ] {
        let mut buf = Vec::new();
        encode(&acquire(forged), &mut buf);
        assert_eq!(
            decode(&buf, &limits),
            Err(DecodeError::Malformed(
                "owner label holds a control or bidi-override character"
            )),
            "{forged:?}"
        );
    }
    let mut buf = Vec::new();
    encode(&acquire(&[b'x'; MAX_OWNER_LABEL + 1]), &mut buf);
    assert_eq!(
        decode(&buf, &limits),
        Err(DecodeError::Malformed("owner label longer than 128 bytes"))
    );
    let mut buf = Vec::new();
    encode(&acquire(&[0xff, 0xfe]), &mut buf);
    assert_eq!(
        decode(&buf, &limits),
        Err(DecodeError::Malformed("owner label is not UTF-8"))
    );
}

/// `AcquireAll` and `GrantedAll` round trip, also with more keys than `MAX_KEYS_PER_ACQUIRE`
/// (the broker refuses those for the request alone); a key count the frame cannot hold is
/// malformed.
#[test]
fn multi_key_frames_round_trip_and_are_bounded() {
    let limits = Limits::default();
    let frames = [
        Frame::AcquireAll(AcquireAll {
            id: 5,
            keys: vec![Bytes::from_static(b"acct/1"), Bytes::from_static(b"acct/2")],
            ttl_ms: 30_000,
            wait: WaitSpec::Millis(2000),
            owner: Bytes::from_static(b"transfer@host"),
        }),
        Frame::GrantedAll(GrantedAll {
            id: 5,
            leases: vec![GrantedLease {
                key: Bytes::from_static(b"acct/1"),
                fence: 77,
                ttl_ms: 30_000,
                secret: LeaseSecret([7; 16]),
            }],
        }),
    ];
    for f in frames {
        let mut buf = Vec::new();
        encode(&f, &mut buf);
        assert_eq!(decode(&buf, &limits), Ok(Some((f, buf.len()))));
    }
    let too_many = Frame::AcquireAll(AcquireAll {
        id: 6,
        keys: vec![Bytes::from_static(b"k"); MAX_KEYS_PER_ACQUIRE + 1],
        ttl_ms: 0,
        wait: WaitSpec::NoWait,
        owner: Bytes::new(),
    });
    let mut buf = Vec::new();
    encode(&too_many, &mut buf);
    assert_eq!(decode(&buf, &limits), Ok(Some((too_many, buf.len()))));
    // A count of 2^20 keys in a frame of a few bytes.
    let mut buf = Vec::new();
    encode(
        &Frame::AcquireAll(AcquireAll {
            id: 7,
            keys: vec![],
            ttl_ms: 0,
            wait: WaitSpec::NoWait,
            owner: Bytes::new(),
        }),
        &mut buf,
    );
    buf[14..18].copy_from_slice(&(1u32 << 20).to_le_bytes());
    assert_eq!(
        decode(&buf, &limits),
        Err(DecodeError::Malformed("key count"))
    );
}
