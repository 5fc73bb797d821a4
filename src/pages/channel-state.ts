// The life of one of RemoteSource's two channels (urgent, bulk): its
// connection to the page server, lost and made again, written down once;
// the channel moves only through this table.
//
//   connecting ──HELLO and INFO accepted, the source open──▶ connected ──lost──▶ reconnecting
//       │   └──lost (before the source finished opening)──▶ reconnecting ◀──────────┘  │
//       │                                                      └──HELLO and INFO matched──▶ connected
//   any ──close (the source closed or gave up: the deadline passed, the image changed)──▶ closed
//
// A channel reconnecting keeps its fetches queued (reads wait, nothing is
// failed) until the reconnect deadline; the source then gives up on the
// server, which closes both channels.
import { TransitionTable } from '../transition-table.js';

export type ChannelState = 'connecting' | 'connected' | 'reconnecting' | 'closed';
export type ChannelEvent = 'connected' | 'lost' | 'close';

export const CHANNEL_STATES = new TransitionTable<ChannelState, ChannelEvent>('a page server channel', {
  connecting: { connected: 'connected', lost: 'reconnecting', close: 'closed' },
  // 'connected' again: the source's opening (metadata, zero map) ended after a loss during it was already healed.
  connected: { lost: 'reconnecting', connected: 'connected', close: 'closed' },
  reconnecting: { connected: 'connected', close: 'closed' },
  // Closed twice: a single-connection source's one channel is both of its channels.
  closed: { close: 'closed' },
});
