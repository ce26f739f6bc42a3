//! A data centre's small answer chunks, sent to the client together.
//!
//! An answer reaches the client frame by frame as hyper reads it from the
//! data centre. HTTP/2 queues each frame the client has window for but has
//! not yet read as an entry of its own, a few hundred bytes whatever the
//! frame's size, while `max_send_buf_size` charges the data alone: an
//! answer in chunks of one byte to a client that opened its window wide
//! and stopped reading held about 19 MiB per stream, where the 64 KiB per
//! stream the README states was meant.
//!
//! [`Gathered`] joins consecutive small chunks as Nagle's algorithm does:
//! a chunk under [`SMALL`] goes out at once when no small one went out in
//! the last [`LINGER`]; otherwise it waits, joined with what follows, until
//! [`SMALL`] bytes are gathered, the answer ends, or [`LINGER`] has passed
//! since the last small one. A stream's queue thus holds at most 16 frames
//! of [`SMALL`] or more per 64 KiB, and small frames at most one per
//! [`LINGER`]. A chunk that is the answer's last, or [`SMALL`] or larger,
//! is passed on as it came (no copy); the usual answer to an upload is one
//! such chunk, so nothing is allocated for it.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// Chunks under this size are gathered.
pub const SMALL: usize = 4096;

/// At most one frame under [`SMALL`] goes out per this time.
pub const LINGER: Duration = Duration::from_millis(10);

/// A body whose small data chunks are gathered (see the module docs).
pub struct Gathered<B: HttpBody> {
    inner: B,
    /// Made at the first small chunk that is not the last.
    state: Option<Box<State<B::Error>>>,
}

struct State<E> {
    /// Small chunks not yet sent.
    gathered: Small,
    /// What came after the gathered bytes and goes out next: a large
    /// chunk, trailers or an error.
    held: Option<Result<Frame<Bytes>, E>>,
    /// The inner body ended after the gathered bytes.
    ended: bool,
    /// When the last frame under [`SMALL`] went out.
    last_small: Option<Instant>,
    linger: Option<Pin<Box<Sleep>>>,
}

/// Small chunks not yet sent: the first as it came, the next copied in
/// with it.
enum Small {
    None,
    One(Bytes),
    Many(BytesMut),
}

impl Small {
    fn len(&self) -> usize {
        match self {
            Small::None => 0,
            Small::One(b) => b.len(),
            Small::Many(b) => b.len(),
        }
    }

    fn push(&mut self, data: Bytes) {
        *self = match std::mem::replace(self, Small::None) {
            Small::None => Small::One(data),
            Small::One(first) => {
                let mut many = BytesMut::with_capacity(SMALL.max(first.len() + data.len()));
                many.extend_from_slice(&first);
                many.extend_from_slice(&data);
                Small::Many(many)
            }
            Small::Many(mut many) => {
                many.extend_from_slice(&data);
                Small::Many(many)
            }
        }
    }

    fn take(&mut self) -> Bytes {
        match std::mem::replace(self, Small::None) {
            Small::None => Bytes::new(),
            Small::One(b) => b,
            Small::Many(b) => b.freeze(),
        }
    }
}

impl<B: HttpBody> Gathered<B> {
    pub fn new(inner: B) -> Gathered<B> {
        Gathered { inner, state: None }
    }
}

impl<E> State<E> {
    fn new() -> Box<State<E>> {
        Box::new(State {
            gathered: Small::None,
            held: None,
            ended: false,
            last_small: None,
            linger: None,
        })
    }

    /// The gathered bytes as a frame, noting when a small one went out.
    fn flush(&mut self) -> Poll<Option<Result<Frame<Bytes>, E>>> {
        let data = self.gathered.take();
        if data.len() < SMALL {
            self.last_small = Some(Instant::now());
        }
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    /// Whether gathered small bytes may go out now that nothing more has
    /// arrived: no small frame went out in the last [`LINGER`], or that
    /// has passed since (the timer then wakes the task).
    fn lingered(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(last) = self.last_small else {
            return true;
        };
        let until = last + LINGER;
        if Instant::now() >= until {
            return true;
        }
        let linger = match &mut self.linger {
            Some(linger) => {
                linger.as_mut().reset(until);
                linger
            }
            None => self
                .linger
                .insert(Box::pin(tokio::time::sleep_until(until))),
        };
        std::future::Future::poll(linger.as_mut(), cx).is_ready()
    }
}

impl<B> HttpBody for Gathered<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        if this.state.is_some() {
            return this.poll_gathering(cx);
        }
        // Until a small chunk that is not the last: each frame as it came
        // (the usual answer, every large chunk, trailers, errors).
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame)))
                if frame.data_ref().is_some_and(|d| d.len() < SMALL)
                    && !this.inner.is_end_stream() =>
            {
                let data = frame.into_data().unwrap_or_default();
                this.state.insert(State::new()).gathered.push(data);
                this.poll_gathering(cx)
            }
            polled => polled,
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            Some(s) if s.gathered.len() > 0 || s.held.is_some() => false,
            Some(s) if s.ended => true,
            _ => self.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.inner.size_hint();
        let Some(state) = &self.state else {
            return hint;
        };
        let held = match &state.held {
            Some(Ok(frame)) => frame.data_ref().map_or(0, Bytes::len),
            _ => 0,
        };
        let extra = (state.gathered.len() + held) as u64;
        if state.ended {
            return SizeHint::with_exact(extra);
        }
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper + extra);
        }
        hint.set_lower(hint.lower() + extra);
        hint
    }
}

impl<B> Gathered<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    /// [`HttpBody::poll_frame`] once a small chunk has come: what was held
    /// back first, then the inner body's frames, gathered.
    #[cold]
    #[inline(never)]
    fn poll_gathering(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let state = self.state.as_mut().expect("gathering");
        if let Some(held) = state.held.take() {
            return Poll::Ready(Some(held));
        }
        if state.ended {
            return Poll::Ready(None);
        }
        loop {
            let gathering = self.state.as_ref().is_some_and(|s| s.gathered.len() > 0);
            let data = match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => data,
                    Err(frame) if gathering => return self.hold(Ok(frame)),
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
                Poll::Ready(Some(Err(e))) if gathering => return self.hold(Err(e)),
                Poll::Ready(None) if gathering => {
                    let state = self.state.as_mut().expect("gathering");
                    state.ended = true;
                    return state.flush();
                }
                Poll::Ready(other) => return Poll::Ready(other),
                Poll::Pending if gathering => {
                    let state = self.state.as_mut().expect("gathering");
                    // Otherwise woken by the inner body or the timer.
                    if state.lingered(cx) {
                        return state.flush();
                    }
                    return Poll::Pending;
                }
                Poll::Pending => return Poll::Pending,
            };
            let last = self.inner.is_end_stream();
            if !gathering && (data.len() >= SMALL || last) {
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            if gathering && data.len() >= SMALL {
                return self.hold(Ok(Frame::data(data)));
            }
            let state = self.state.as_mut().expect("gathering");
            state.gathered.push(data);
            if state.gathered.len() >= SMALL || last {
                return state.flush();
            }
        }
    }

    /// Sends the gathered bytes now and `next` after them.
    fn hold(
        &mut self,
        next: Result<Frame<Bytes>, B::Error>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let state = self.state.as_mut().expect("gathering");
        state.held = Some(next);
        state.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// What a body's poll gives.
    type Polled = Poll<Option<Result<Frame<Bytes>, &'static str>>>;

    /// A body that answers each poll with the next scripted result.
    struct Script(VecDeque<Polled>);

    impl HttpBody for Script {
        type Data = Bytes;
        type Error = &'static str;

        fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Polled {
            self.0.pop_front().unwrap_or(Poll::Ready(None))
        }

        fn is_end_stream(&self) -> bool {
            self.0.is_empty()
        }
    }

    fn data(b: &'static [u8]) -> Polled {
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b)))))
    }

    /// Polls once with a waker that does nothing.
    fn poll(body: &mut Gathered<Script>) -> Poll<Option<Result<Bytes, &'static str>>> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        Pin::new(body)
            .poll_frame(&mut cx)
            .map(|f| f.map(|f| f.map(|f| f.into_data().expect("data"))))
    }

    fn script(polls: impl IntoIterator<Item = Polled>) -> Gathered<Script> {
        Gathered::new(Script(polls.into_iter().collect()))
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_s_last_chunk_and_large_chunks_pass_as_they_came() {
        static LARGE: [u8; SMALL] = [b'l'; SMALL];
        let mut body = script([data(&LARGE), Poll::Pending, data(b"end")]);
        let Poll::Ready(Some(Ok(first))) = poll(&mut body) else {
            panic!("the large chunk")
        };
        assert_eq!(first.as_ptr(), LARGE.as_ptr(), "not copied");
        assert!(poll(&mut body).is_pending());
        let Poll::Ready(Some(Ok(last))) = poll(&mut body) else {
            panic!("the last chunk")
        };
        assert_eq!(last.as_ptr(), b"end".as_ptr());
        assert!(body.state.is_none(), "nothing allocated");
        assert!(body.is_end_stream());
        assert!(matches!(poll(&mut body), Poll::Ready(None)));
    }

    #[tokio::test(start_paused = true)]
    async fn small_chunks_that_arrive_together_go_out_together() {
        let mut body = script((0..5000).map(|_| data(b"x")).chain([
            Poll::Pending,
            data(b"y"),
            Poll::Pending,
            data(b"z"),
        ]));
        let Poll::Ready(Some(Ok(first))) = poll(&mut body) else {
            panic!("gathered")
        };
        assert_eq!(first.len(), SMALL, "up to SMALL");
        let Poll::Ready(Some(Ok(rest))) = poll(&mut body) else {
            panic!("the rest, when nothing more arrived")
        };
        assert_eq!(rest.len(), 5000 - SMALL);
        // The next small chunk within LINGER of the last waits for it.
        assert!(poll(&mut body).is_pending());
        let Poll::Ready(Some(Ok(end))) = poll(&mut body) else {
            panic!("the end, with what waited")
        };
        assert_eq!(&end[..], b"yz");
        assert!(matches!(poll(&mut body), Poll::Ready(None)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_small_chunk_waits_at_most_linger_after_the_last_small_one() {
        let mut body = script([
            data(b"a"),
            Poll::Pending,
            data(b"b"),
            Poll::Pending,
            Poll::Pending,
            Poll::Pending,
            data(b"c"),
            Poll::Pending,
        ]);
        // The first goes out at once.
        assert_eq!(
            poll(&mut body),
            Poll::Ready(Some(Ok(Bytes::from_static(b"a"))))
        );
        // The second came 0 ms later: it waits.
        assert!(poll(&mut body).is_pending());
        tokio::time::advance(LINGER / 2).await;
        assert!(poll(&mut body).is_pending());
        tokio::time::advance(LINGER / 2).await;
        assert_eq!(
            poll(&mut body),
            Poll::Ready(Some(Ok(Bytes::from_static(b"b"))))
        );
        // A small chunk LINGER after the last goes at once.
        tokio::time::advance(LINGER).await;
        assert_eq!(
            poll(&mut body),
            Poll::Ready(Some(Ok(Bytes::from_static(b"c"))))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn what_follows_gathered_bytes_goes_out_after_them_in_order() {
        static LARGE: [u8; SMALL] = [b'l'; SMALL];
        let mut body = script([
            data(b"a"),
            data(b"b"),
            data(&LARGE),
            data(b"c"),
            Poll::Ready(Some(Err("reset"))),
        ]);
        assert_eq!(
            poll(&mut body),
            Poll::Ready(Some(Ok(Bytes::from_static(b"ab"))))
        );
        assert!(!body.is_end_stream());
        assert_eq!(body.size_hint().lower(), SMALL as u64, "the held chunk");
        let Poll::Ready(Some(Ok(large))) = poll(&mut body) else {
            panic!("the large chunk")
        };
        assert_eq!(large.as_ptr(), LARGE.as_ptr(), "not copied");
        assert_eq!(
            poll(&mut body),
            Poll::Ready(Some(Ok(Bytes::from_static(b"c"))))
        );
        assert_eq!(poll(&mut body), Poll::Ready(Some(Err("reset"))));
    }
}
