// The engine: one thread that owns the model, its backend (the GPU) and the
// state pool, and runs every request in continuous batches.
//
// Each step: finish what was cancelled; admit waiting requests into state
// slots (moving idle sessions out to host memory, LRU, when the pool is
// full); run one fused decode step for every generating session; feed
// prompt pieces under the per-step token budget; sample; hand tokens to the
// streams. Requests join and leave between steps.
//
// Sessions live in one of three tiers: a slot of the pool (device), host
// memory, or a snapshot file in the snapshot directory (disk); touching a
// session brings it back into a slot. A session that has seen tokens holds
// its last token unfed ("pending"): the next request feeds it first, so the
// logits that continue the session are always computed, never stored. A
// request cancelled in its prompt leaves the unfed rest pending too, so a
// session always holds every token it was given.
//
// Exactness: a session's prompt is fed in pieces that end on multiples of
// `prefill_piece` of its own position, and decode steps are batch-invariant,
// so a session's tokens do not depend on which other sessions share a step.
//
// Threads: RPC handlers call Submit / the session calls, which only queue
// work; results come back through Stream (generation) or callbacks (run on
// the engine thread; they must not block).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model/model.h"
#include "model/tokenizer.h"
#include "server/generation.h"
#include "server/host_pool.h"
#include "server/penalty_table.h"
#include "server/snapshot.h"
#include "server/metrics.h"

namespace fwp::server {

using Clock = std::chrono::steady_clock;



enum class Tier { kDevice = 1, kHost = 2, kDisk = 3 };
enum class FinishReason { kNone = 0, kLength = 1, kEos = 2, kStop = 3, kCancelled = 4 };
const char* TierName(Tier tier);

struct Usage {
  int32_t prompt_tokens = 0;
  int32_t generated_tokens = 0;
  double time_to_first_token_s = 0.0;
  double total_time_s = 0.0;
  int64_t session_tokens = 0;
};

// One message of a generation stream.
struct Event {
  std::string session_id;  // in the first event
  std::vector<int32_t> tokens;
  std::string text;
  std::vector<TokenLogprob> logprobs;
  std::vector<TokenLogprob> top_logprobs;
  bool finished = false;
  FinishReason reason = FinishReason::kNone;
  Usage usage;
  absl::Status status;  // not OK: the request failed (and is finished)
};

// A request's output: the engine pushes events, the RPC side pops them.
// Thread-safe. `notify` runs after every push (outside the lock).
class Stream {
 public:
  void Push(Event event);
  std::optional<Event> Pop();
  // Everything buffered, merged into one event (tokens, text and
  // log-probabilities concatenated; the last event's end): a reader that fell
  // behind catches up in one message. An error event is returned alone.
  std::optional<Event> PopMerged();
  size_t buffered() const;
  // From the RPC side: the client went away or the deadline passed.
  void Cancel();
  bool cancelled() const;
  void SetNotify(std::function<void()> notify);  // empty: stop notifying
  // The session the request runs on, set when the engine starts it.
  void SetSessionId(const std::string& id);
  std::string session_id() const;

 private:
  mutable std::mutex mutex_;
  std::deque<Event> events_;
  std::string session_id_;
  std::function<void()> notify_;
  bool cancelled_ = false;
};

struct SessionInfo {
  std::string id;
  int64_t tokens = 0;
  Tier tier = Tier::kHost;
  int64_t state_bytes = 0;
  bool busy = false;
};

struct ScoreResult {
  std::vector<TokenLogprob> tokens;  // one per scored token
  double logprob = 0.0;
};

struct EngineOptions {
  int32_t slots = 64;              // state pool slots
  int64_t step_tokens = 512;       // tokens per step: decode + prompt pieces
  int64_t prefill_piece = 64;      // prompt pieces end on multiples of this
  int64_t max_requests = 1024;     // running + queued requests
  int64_t max_queue = 256;         // requests waiting for a slot
  int64_t max_prompt_tokens = 65536;
  int64_t host_bytes = int64_t{4} << 30;  // host memory for parked sessions
  std::string snapshot_dir;        // empty: no disk tier
  bool snapshot_every_turn = false;  // write a session's snapshot after each request
  // Sessions not asked for in this long are deleted (and their snapshots,
  // also those of sessions this server has not loaded, by the files' age);
  // 0: never.
  double session_ttl_s = 0;
  // Events buffered per stream before it pauses; a paused stream's state may
  // leave its slot for another request's, and comes back when it is read.
  size_t stream_buffer = 64;
  GenerationLimits limits;
};

class Engine {
 public:
  static absl::StatusOr<std::unique_ptr<Engine>> Create(const EngineOptions& options,
                                                        Model& model,
                                                        const Tokenizer& tokenizer,
                                                        uint64_t fingerprint,
                                                        Metrics* metrics);
  ~Engine();  // stops the engine thread (cancelling what runs)

  const EngineOptions& options() const { return options_; }
  int64_t state_bytes() const { return state_bytes_; }
  // Backend bytes of the penalty table, allocated when a penalised request
  // first runs (one int32 row of the vocabulary per slot).
  int64_t penalty_table_bytes() const;

  struct GenerateJob {
    std::string principal;   // who asks (bearer-token name; empty without auth)
    std::string session_id;  // continue this session; empty: a new state
    bool keep_session = false;
    // The new session lives as long as the caller's stream (a chat's own),
    // which ReleaseSession ends: the drain does not write it to disk.
    bool with_stream = false;
    std::vector<int32_t> prompt;
    GenerationParams params;
    Clock::time_point arrival = Clock::now();
    std::shared_ptr<Stream> out;
  };
  // Queues a generation; its events (or its error) arrive through job.out.
  // Refuses at once when draining (UNAVAILABLE) or over the bounds
  // (RESOURCE_EXHAUSTED).
  absl::Status Submit(GenerateJob job);

  using InfoCallback = std::function<void(absl::StatusOr<SessionInfo>)>;
  // `id` empty: a random one. `gone` (may be null) says whether the caller
  // has gone (cancelled, past its deadline): a prompt still being fed is then
  // stopped and its session dropped, as a stream's. Score likewise.
  void CreateSession(std::string principal, std::string id, std::vector<int32_t> prompt,
                     InfoCallback done, std::function<bool()> gone = nullptr);
  void ForkSession(std::string principal, std::string id, InfoCallback done);
  void GetSession(std::string principal, std::string id, InfoCallback done);
  // A request running on the session is cancelled; the session is gone for
  // callers at once and removed when that request ends.
  void DeleteSession(std::string principal, std::string id,
                     std::function<void(absl::Status)> done);
  // DeleteSession without an answer (a chat stream's own session when the
  // stream goes away).
  void ReleaseSession(std::string principal, std::string id);
  void Score(std::string principal, std::string id, std::vector<int32_t> tokens,
             std::function<void(absl::StatusOr<ScoreResult>)> done,
             std::function<bool()> gone = nullptr);

  // Graceful shutdown: refuse new work (UNAVAILABLE), let running requests
  // finish for up to `grace`, cancel the rest, then write every session to
  // the snapshot directory (when set). Returns when the engine thread is idle.
  void Drain(std::chrono::milliseconds grace);
  bool draining() const;

  // Requests running or queued (for tests and shutdown).
  int64_t inflight() const;

 private:
  struct Session;
  struct Job;
  struct Active;

  Engine(const EngineOptions& options, Model& model, const Tokenizer& tokenizer,
         uint64_t fingerprint, Metrics* metrics);

  absl::Status Enqueue(std::unique_ptr<Job> job);
  void Post(std::function<void()> command);
  void Loop();
  void Step();
  bool HasRunnableWork() const;

  // Engine-thread helpers.
  absl::StatusOr<Session*> Lookup(const std::string& principal, const std::string& id);
  absl::StatusOr<Session*> NewSession(const std::string& owner, bool ephemeral,
                                      const std::string& id = "");
  absl::Status CanAddSession() const;
  // --snapshot_every_turn with a directory other replicas share: a copy held
  // here whose file another replica has since replaced (it continued the
  // session) is dropped, so the file's is used (`session` set to null).
  absl::Status CheckHeldCopy(Session*& session);
  // --snapshot_every_turn: whether the session's snapshot file holds this
  // copy (kCurrent), another replica's newer one (kStale), or neither is
  // known (kUnknown: the copy must be written to be on disk).
  enum class FileState { kUnknown, kCurrent, kStale };
  FileState HeldFileState(Session& session);
  // writer_mutex_ held: the identity of the writer's last write of the
  // session (written_files_), taken into session.file.
  void TakeWrittenFile(Session& session);
  // Its snapshot, from `bytes` (a copy waiting for the disk) or its file,
  // checked; errors name the session.
  absl::StatusOr<SessionSnapshot> ReadSession(const std::string& id, const std::string* bytes,
                                              FileId* file = nullptr) const;
  // The session's state (a disk-tier session also takes its file's position
  // and pending tokens, read with it).
  absl::Status LoadState(Session& session, std::vector<char>* state);
  absl::Status MakeResident(Session& session);
  bool EvictOne();
  // A decode whose paused stream lent its slot takes one again.
  absl::Status BringBack(Active& a);
  static constexpr std::chrono::milliseconds kLendSlotAfter{100};
  void SpillHost();
  void ExpireSessions();  // --session_ttl_s
  // A copy of `parent`'s state as a new session (forks, and scoring without
  // touching the session).
  absl::StatusOr<Session*> CopySession(Session& parent, const std::string& owner,
                                       bool ephemeral);
  // The session's snapshot file contents.
  absl::StatusOr<std::string> EncodeSession(Session& session);
  absl::Status WriteToDisk(Session& session);
  // The time its snapshot file is given: when the session was last asked
  // for, so a file's age is its session's idle time whenever it was written
  // (--session_ttl_s; a drain's writes do not make sessions young again).
  std::filesystem::file_time_type UsedTime(const Session& session) const;
  // --snapshot_every_turn: the snapshot is encoded on the engine thread and
  // written (fsync, rename) by the writer thread, which then runs `then`
  // with the write's status (the request's answer: an error when the turn
  // could not be saved), so a turn is durable before it is acknowledged and
  // the engine never waits on the disk.
  void WriteThen(Session& session, std::function<void(absl::Status)> then);
  // Spilled sessions whose snapshot could not be written are kept in memory
  // (`unwritable_`) and written again every kRetryWrites.
  void RetryUnwritable();
  // The session is back in memory or gone: any copy of it that waits for
  // the disk is dropped, and (remove_file) its snapshot file removed.
  void DropSnapshot(const std::string& id, bool remove_file);
  void WriterLoop();
  void FlushWrites();
  // --session_ttl_s, writer thread (`lock` held): reads --snapshot_dir
  // between writes, so that neither a spill nor the engine waits for a
  // large directory. It removes temporary files of writes that never
  // finished (older than kAbandonedWrite and the TTL) and hands the ids of
  // snapshot files last used more than 1.25 × the TTL ago to the engine
  // thread, which keeps those of sessions it holds (it alone knows them; no
  // file I/O there) and hands the rest back to be removed if still as old.
  void ScanSnapshots(std::unique_lock<std::mutex>& lock);
  void RemoveAbandonedSnapshots(const std::vector<std::string>& ids);  // engine thread
  // Writer thread (`lock` held): removes those still as old, between writes.
  void RemoveAbandoned(const std::vector<std::string>& ids, std::unique_lock<std::mutex>& lock);
  // Writer thread, `lock` held: writes the first queued snapshot.
  void WriteNext(std::unique_lock<std::mutex>& lock);
  // Writer thread, `lock` held: writes every queued snapshot (they go before
  // the directory's clean-up); false when the writer is stopping.
  bool WriteQueued(std::unique_lock<std::mutex>& lock);
  // remove_file: its snapshot file goes too (a delete); not on expiry.
  void RemoveSession(Session* session, bool remove_file = true);
  SessionInfo Info(const Session& session) const;
  std::string SnapshotPath(const std::string& id) const;
  void StartJob(std::unique_ptr<Job> job);
  void Admit(Active& active);
  void FeedLogits(Active& active, const float* logits);  // samples on the host
  void FeedPick(Active& active, TokenSampler::Pick pick);
  // Ends a request: releases (and with --snapshot_every_turn persists) its
  // session, then delivers `last` (the final event of a completed
  // generation) or the error / cancellation.
  void Finish(Active& active, FinishReason reason, absl::Status status,
              Event* last = nullptr);
  void PublishGauges();

  EngineOptions options_;
  Model& model_;
  const Tokenizer& tokenizer_;
  uint64_t fingerprint_;
  Metrics* metrics_;
  int64_t vocab_;
  int64_t state_bytes_;
  std::unique_ptr<StatePool> pool_;
  // Penalised requests' counts, a row per slot (on the backend).
  std::unique_ptr<PenaltyTable> penalty_table_;
  // Declared before sessions_ so that it outlives the blocks they hold.
  std::unique_ptr<HostStatePool> host_pool_;

  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable idle_;
  std::deque<std::function<void()>> commands_;
  bool draining_ = false;
  bool stop_ = false;
  int64_t inflight_ = 0;  // Submit'ed, not finished
  int64_t queued_ = 0;    // Submit'ed, not admitted

  // Engine thread only.
  std::vector<std::unique_ptr<Active>> active_;
  std::unordered_map<std::string, std::unique_ptr<Session>> sessions_;
  std::vector<Session*> slot_owner_;
  std::vector<int32_t> free_slots_;
  int64_t host_sessions_ = 0;
  uint64_t tick_ = 0;
  std::vector<float> logits_;
  Clock::time_point rate_start_ = Clock::now();
  Clock::time_point gauges_published_;
  uint64_t rate_tokens_ = 0;

  std::thread thread_;

  struct PendingWrite {
    std::string id;
    std::shared_ptr<const std::string> bytes;
    std::function<void(absl::Status)> then;  // null: a spill
    std::filesystem::file_time_type used;   // the file's time (UsedTime)
  };
  // Queues a snapshot for the writer; until it is on disk, LoadState reads
  // it from `unwritten_` (a spilled session may be touched at once).
  void QueueWrite(const Session& session, std::shared_ptr<const std::string> bytes,
                  std::function<void(absl::Status)> then);
  // Waits for a pending write of `id`, so that removing its file sticks.
  void SettleWrite(const std::string& id);
  mutable std::mutex writer_mutex_;
  std::condition_variable writer_wake_;
  std::condition_variable writer_idle_;
  std::deque<PendingWrite> writes_;
  std::unordered_map<std::string, std::shared_ptr<const std::string>> unwritten_;
  // Spills the disk refused (full, I/O error): the sessions' only copies,
  // read by LoadState and written again by RetryUnwritable.
  std::unordered_map<std::string, std::shared_ptr<const std::string>> unwritable_;
  static constexpr std::chrono::seconds kRetryWrites{5};
  Clock::time_point next_write_retry_;
  Clock::time_point next_expiry_;
  bool writing_ = false;
  bool writer_stop_ = false;
  bool scan_wanted_ = false;  // of --snapshot_dir, by ExpireSessions
  std::vector<std::string> abandoned_;  // snapshot files no session here holds, to remove
  // --snapshot_every_turn: the files the writer wrote (none: the write
  // failed), by session, until HeldFileState takes them.
  std::unordered_map<std::string, std::optional<FileId>> written_files_;
  static constexpr std::chrono::minutes kAbandonedWrite{10};
  std::thread writer_;
};

}  // namespace fwp::server
