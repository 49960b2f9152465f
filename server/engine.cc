#include "server/engine.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <future>
#include <utility>

#include <sys/random.h>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "kernels/status_macros.h"
#include "model/atomic_file.h"
#include "server/snapshot.h"

namespace fwp::server {

const char* TierName(Tier tier) {
  switch (tier) {
    case Tier::kDevice: return "device";
    case Tier::kHost: return "host";
    case Tier::kDisk: return "disk";
  }
  return "unknown";
}

// ---- Stream ----------------------------------------------------------------

void Stream::Push(Event event) {
  std::function<void()> notify;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    events_.push_back(std::move(event));
    notify = notify_;
  }
  if (notify) notify();
}

std::optional<Event> Stream::Pop() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (events_.empty()) return std::nullopt;
  Event event = std::move(events_.front());
  events_.pop_front();
  return event;
}

std::optional<Event> Stream::PopMerged() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (events_.empty()) return std::nullopt;
  Event merged = std::move(events_.front());
  events_.pop_front();
  while (merged.status.ok() && !merged.finished && !events_.empty() &&
         events_.front().status.ok()) {
    Event& next = events_.front();
    merged.tokens.insert(merged.tokens.end(), next.tokens.begin(), next.tokens.end());
    merged.text += next.text;
    merged.logprobs.insert(merged.logprobs.end(), next.logprobs.begin(), next.logprobs.end());
    merged.top_logprobs.insert(merged.top_logprobs.end(), next.top_logprobs.begin(),
                               next.top_logprobs.end());
    if (merged.session_id.empty()) merged.session_id = std::move(next.session_id);
    merged.finished = next.finished;
    merged.reason = next.reason;
    merged.usage = next.usage;
    events_.pop_front();
  }
  return merged;
}

size_t Stream::buffered() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return events_.size();
}

void Stream::SetSessionId(const std::string& id) {
  std::lock_guard<std::mutex> lock(mutex_);
  session_id_ = id;
}

std::string Stream::session_id() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return session_id_;
}

void Stream::Cancel() {
  std::lock_guard<std::mutex> lock(mutex_);
  cancelled_ = true;
}

bool Stream::cancelled() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return cancelled_;
}

void Stream::SetNotify(std::function<void()> notify) {
  std::lock_guard<std::mutex> lock(mutex_);
  notify_ = std::move(notify);
}

// ---- Engine internals ----------------------------------------------------

struct Engine::Session {
  std::string id;
  std::string owner;
  Tier tier = Tier::kHost;
  int32_t slot = -1;          // kDevice
  HostStatePool::Block host;  // kHost; null: the empty state
  int64_t position = 0;       // tokens fed into the state
  // Seen, not yet fed: the last token (so the logits that continue the
  // session are computed when needed), or what a cancelled request's prompt
  // had left unfed.
  std::vector<int32_t> pending;
  bool busy = false;
  bool ephemeral = false;
  bool with_stream = false;  // GenerateJob::with_stream
  bool file_missing = false;  // kDisk: its file was not there when read
  // Busy, but its request is decoding into a stream its client is not
  // reading (paused): its state may leave the slot like an idle session's,
  // and comes back before the request's next step (Step).
  bool evictable = false;
  uint64_t last_used = 0;                   // LRU order of the tiers
  Clock::time_point active = Clock::now();  // last asked for (--session_ttl_s)
  Clock::time_point file_touched;           // its snapshot file's time last set
  // --snapshot_every_turn: the snapshot file this copy was last written to or
  // read from (a replica sharing the directory that continues the session
  // replaces the file; Lookup then drops this copy for the file's).
  std::optional<FileId> file;
};

struct Engine::Job {
  enum class Mode { kGenerate, kPrefill, kScore };
  Mode mode = Mode::kGenerate;
  std::string principal;
  std::string session_id;
  bool keep_session = false;
  bool with_stream = false;  // GenerateJob::with_stream
  std::vector<int32_t> prompt;
  GenerationParams params;
  Clock::time_point arrival = Clock::now();
  std::shared_ptr<Stream> out;                                  // kGenerate
  InfoCallback on_info;                                         // kPrefill
  std::function<void(absl::StatusOr<ScoreResult>)> on_score;   // kScore
  // kPrefill, kScore: whether the caller has gone (client cancel, deadline);
  // polled each step like a stream's cancel, never after the answer.
  std::function<bool()> gone;
  bool cancel = false;  // engine thread: DeleteSession cancelled it
};

struct Engine::Active {
  enum class Phase { kWaiting, kPrefill, kDecode, kDone };
  std::unique_ptr<Job> job;
  Session* session = nullptr;
  Phase phase = Phase::kWaiting;
  std::vector<int32_t> feed;  // the session's pending token + the prompt
  size_t feed_end = 0;        // feed[0, feed_end) goes into the state
  size_t fed = 0;
  size_t prompt_from = 0;     // feed[prompt_from, ·): the prompt (a score's tokens)
  int32_t next_token = 0;     // kDecode: the sampled token to feed
  bool created_session = false;  // this request made its session
  // A request for a session that another request is using waits for it
  // (by id: the session may be deleted meanwhile); `session` is null until.
  std::string waiting_for_session;
  std::unique_ptr<TokenSampler> sampler;
  std::unique_ptr<TextStream> text;
  int32_t generated = 0;
  Clock::time_point first_token;
  Clock::time_point last_token;
  ScoreResult score;
  // The penalty table's row this request filled (its slot), and the table's
  // generation then; −1 until it has one.
  int32_t penalty_row = -1;
  uint64_t penalty_generation = 0;
  std::optional<Clock::time_point> paused_since;  // kDecode, its stream paused

  bool paused(size_t bound) const { return job->out && job->out->buffered() >= bound; }
};

namespace {

// A session's snapshot file written whole, its time set to the session's
// last use (--session_ttl_s); the identity of the file it wrote.
absl::StatusOr<std::optional<FileId>> WriteSnapshotFile(
    const std::string& path, std::string_view bytes, std::filesystem::file_time_type used) {
  FWP_RETURN_IF_ERROR(WriteFileAtomically(path, bytes));
  std::error_code ignored;
  std::filesystem::last_write_time(path, used, ignored);
  return StatFile(path);
}

// 128 bits from the kernel's random source for each id: an id is a
// session's credential where there is no --auth_tokens_file, so one id must
// tell nothing about the next (a seeded generator's outputs give away its
// state).
std::string NewSessionId() {
  unsigned char bytes[16];
  for (size_t got = 0; got < sizeof bytes;) {
    const ssize_t n = ::getrandom(bytes + got, sizeof bytes - got, 0);
    if (n > 0) {
      got += static_cast<size_t>(n);
    } else if (errno != EINTR) {
      std::fprintf(stderr, "fwp-server: getrandom: %s\n", std::strerror(errno));
      std::abort();  // no safe ids without it
    }
  }
  char id[33];
  for (size_t i = 0; i < sizeof bytes; ++i) std::snprintf(id + 2 * i, 3, "%02x", bytes[i]);
  return id;
}

bool ValidSessionId(const std::string& id) {
  if (id.size() != 32) return false;
  for (char c : id) {
    if (!absl::ascii_isxdigit(static_cast<unsigned char>(c)) || absl::ascii_isupper(c)) {
      return false;
    }
  }
  return true;
}

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// Never throws (a file-system error reads as "no such file").
bool FileExists(const std::string& path) {
  std::error_code error;
  return std::filesystem::exists(path, error);
}

}  // namespace

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(const EngineOptions& options,
                                                       Model& model,
                                                       const Tokenizer& tokenizer,
                                                       uint64_t fingerprint,
                                                       Metrics* metrics) {
  if (options.slots < 1) return absl::InvalidArgumentError("--slots must be ≥ 1");
  if (options.prefill_piece < 1) {
    return absl::InvalidArgumentError("--prefill_piece must be ≥ 1");
  }
  if (options.step_tokens > (int64_t{1} << 20)) {  // a step's buffers are sized by it
    return absl::InvalidArgumentError(absl::StrCat(
        "--step_tokens (", options.step_tokens, ") must be at most 1048576"));
  }
  if (options.step_tokens < options.prefill_piece) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--step_tokens (", options.step_tokens, ") must be at least --prefill_piece (",
        options.prefill_piece, ")"));
  }
  if (!(options.session_ttl_s >= 0 && options.session_ttl_s <= 1e9)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--session_ttl_s must be in [0, 1e9] seconds (0: never), got ", options.session_ttl_s));
  }
  if (options.max_requests < 1 || options.max_queue < 1) {
    return absl::InvalidArgumentError("--max_requests and --max_queue must be ≥ 1");
  }
  if (options.stream_buffer < 1) {
    return absl::InvalidArgumentError("--stream_buffer must be ≥ 1");
  }
  if (options.host_bytes < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--host_bytes must be ≥ 0, got ", options.host_bytes));
  }
  if (!options.snapshot_dir.empty()) {
    std::error_code error;
    std::filesystem::create_directories(options.snapshot_dir, error);
    if (error || !std::filesystem::is_directory(options.snapshot_dir)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--snapshot_dir ", options.snapshot_dir, " is not a usable directory: ",
          error.message()));
    }
  }
  std::unique_ptr<Engine> engine(new Engine(options, model, tokenizer, fingerprint, metrics));
  auto pool = model.NewStatePool(options.slots);
  if (!pool.ok()) {
    return absl::Status(pool.status().code(),
                        absl::StrCat("state pool of ", options.slots,
                                     " slots: ", pool.status().message()));
  }
  engine->pool_ = std::move(*pool);
  engine->host_pool_ = std::make_unique<HostStatePool>(model.backend(), engine->state_bytes_);
  engine->penalty_table_ =
      std::make_unique<PenaltyTable>(model.backend(), options.slots, engine->vocab_);
  engine->slot_owner_.assign(options.slots, nullptr);
  for (int32_t s = options.slots - 1; s >= 0; --s) engine->free_slots_.push_back(s);
  engine->logits_.resize(
      static_cast<size_t>(std::max<int64_t>(options.slots, options.prefill_piece)) *
      engine->vocab_);
  metrics->slots_total = options.slots;
  engine->writer_ = std::thread([e = engine.get()] { e->WriterLoop(); });
  engine->thread_ = std::thread([e = engine.get()] { e->Loop(); });
  return engine;
}

Engine::Engine(const EngineOptions& options, Model& model, const Tokenizer& tokenizer,
               uint64_t fingerprint, Metrics* metrics)
    : options_(options),
      model_(model),
      tokenizer_(tokenizer),
      fingerprint_(fingerprint),
      metrics_(metrics),
      vocab_(model.config().vocab_size),
      state_bytes_(model.state_layout().SlotBytes()) {}

int64_t Engine::penalty_table_bytes() const { return penalty_table_->bytes(); }

Engine::~Engine() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
  // The engine thread is gone: whatever still runs is cancelled here (before
  // the writer stops, so answers waiting on a snapshot are still delivered).
  for (auto& active : active_) {
    if (active->phase != Active::Phase::kDone) {
      Finish(*active, FinishReason::kCancelled,
             absl::UnavailableError("the server is shutting down"));
    }
  }
  {
    std::lock_guard<std::mutex> lock(writer_mutex_);
    writer_stop_ = true;  // after what is queued
  }
  writer_wake_.notify_all();
  if (writer_.joinable()) writer_.join();
}

// ---- Queueing (any thread) -------------------------------------------------

void Engine::Post(std::function<void()> command) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    commands_.push_back(std::move(command));
  }
  wake_.notify_one();
}

absl::Status Engine::Enqueue(std::unique_ptr<Job> job) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (draining_ || stop_) return absl::UnavailableError("the server is shutting down");
    if (inflight_ >= options_.max_requests) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "the server is running its maximum of ", options_.max_requests,
          " requests (--max_requests); retry later"));
    }
    if (queued_ >= options_.max_queue) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "the queue is full: ", queued_, " requests wait for a state slot (--max_queue)"));
    }
    ++inflight_;
    ++queued_;
    auto holder = std::make_shared<std::unique_ptr<Job>>(std::move(job));
    commands_.push_back([this, holder] { StartJob(std::move(*holder)); });
  }
  wake_.notify_one();
  return absl::OkStatus();
}

absl::Status Engine::Submit(GenerateJob g) {
  FWP_RETURN_IF_ERROR(ValidatePrompt(g.prompt, static_cast<int32_t>(vocab_),
                                     options_.max_prompt_tokens, "prompt"));
  FWP_RETURN_IF_ERROR(
      ValidateGenerationParams(g.params, options_.limits, static_cast<int32_t>(vocab_)));
  if (!g.out) return absl::InvalidArgumentError("no output stream");
  auto job = std::make_unique<Job>();
  job->mode = Job::Mode::kGenerate;
  job->principal = std::move(g.principal);
  job->session_id = std::move(g.session_id);
  job->keep_session = g.keep_session;
  job->with_stream = g.with_stream;
  job->prompt = std::move(g.prompt);
  job->params = std::move(g.params);
  job->arrival = g.arrival;
  job->out = std::move(g.out);
  return Enqueue(std::move(job));
}

void Engine::CreateSession(std::string principal, std::string id, std::vector<int32_t> prompt,
                           InfoCallback done, std::function<bool()> gone) {
  if (auto s = ValidatePrompt(prompt, static_cast<int32_t>(vocab_), options_.max_prompt_tokens,
                              "prompt", /*allow_empty=*/true);
      !s.ok()) {
    return done(s);
  }
  if (!id.empty() && !ValidSessionId(id)) {
    return done(absl::InvalidArgumentError(
        absl::StrCat("session_id must be 32 lowercase hex digits, got \"", id, "\"")));
  }
  if (!prompt.empty()) {
    auto job = std::make_unique<Job>();
    job->mode = Job::Mode::kPrefill;
    job->principal = std::move(principal);
    job->session_id = std::move(id);  // created by StartJob
    job->prompt = std::move(prompt);
    job->gone = std::move(gone);
    job->on_info = done;
    if (auto s = Enqueue(std::move(job)); !s.ok()) done(s);
    return;
  }
  if (draining()) return done(absl::UnavailableError("the server is shutting down"));
  Post([this, principal = std::move(principal), id = std::move(id), done = std::move(done)] {
    if (draining()) return done(absl::UnavailableError("the server is shutting down"));
    auto session = NewSession(principal, /*ephemeral=*/false, id);
    if (!session.ok()) return done(session.status());
    if (options_.snapshot_every_turn && !options_.snapshot_dir.empty()) {
      if (auto s = WriteToDisk(**session); !s.ok()) {
        RemoveSession(*session);
        return done(s);
      }
    }
    done(Info(**session));
  });
}

void Engine::ForkSession(std::string principal, std::string id, InfoCallback done) {
  if (draining()) return done(absl::UnavailableError("the server is shutting down"));
  Post([this, principal = std::move(principal), id = std::move(id), done = std::move(done)] {
    if (draining()) return done(absl::UnavailableError("the server is shutting down"));
    auto parent = Lookup(principal, id);
    if (!parent.ok()) return done(parent.status());
    if ((*parent)->busy) {
      return done(absl::FailedPreconditionError(
          absl::StrCat("session ", id, " is busy with a request; fork it when it is idle")));
    }
    auto child = CopySession(**parent, principal, /*ephemeral=*/false);
    if (!child.ok()) return done(child.status());
    if (options_.snapshot_every_turn && !options_.snapshot_dir.empty()) {
      // Its id may hash to another replica sharing the snapshot dir.
      if (auto s = WriteToDisk(**child); !s.ok()) {
        RemoveSession(*child);
        return done(s);
      }
    }
    done(Info(**child));
  });
}

void Engine::GetSession(std::string principal, std::string id, InfoCallback done) {
  Post([this, principal = std::move(principal), id = std::move(id), done = std::move(done)] {
    auto session = Lookup(principal, id);
    if (!session.ok()) return done(session.status());
    done(Info(**session));
  });
}

void Engine::DeleteSession(std::string principal, std::string id,
                           std::function<void(absl::Status)> done) {
  Post([this, principal = std::move(principal), id = std::move(id), done = std::move(done)] {
    auto session = Lookup(principal, id);
    if (!session.ok() && session.status().code() == absl::StatusCode::kDataLoss &&
        sessions_.find(id) == sessions_.end()) {
      // A snapshot no server can read belongs to no one any more (its owner
      // cannot be checked): deleting it is the only thing left to do with it.
      std::error_code error;
      std::filesystem::remove(SnapshotPath(id), error);
      return done(error ? absl::InternalError(absl::StrCat("cannot remove ", SnapshotPath(id),
                                                           ": ", error.message()))
                        : absl::OkStatus());
    }
    if (!session.ok()) return done(session.status());
    if ((*session)->busy) {
      // Delete wins: the request running on it is cancelled, and the session
      // goes when that request ends (it is unreachable from now on).
      for (auto& a : active_) {
        if (a->session != *session) continue;
        if (a->job->out) {
          a->job->out->Cancel();
        } else {
          a->job->cancel = true;  // a CreateSession's prompt
        }
      }
      (*session)->ephemeral = true;
    } else {
      RemoveSession(*session);
    }
    done(absl::OkStatus());
  });
}

void Engine::ReleaseSession(std::string principal, std::string id) {
  DeleteSession(std::move(principal), std::move(id), [](absl::Status) {});
}

void Engine::Score(std::string principal, std::string id, std::vector<int32_t> tokens,
                   std::function<void(absl::StatusOr<ScoreResult>)> done,
                   std::function<bool()> gone) {
  if (auto s = ValidatePrompt(tokens, static_cast<int32_t>(vocab_), options_.max_prompt_tokens,
                              "prompt");
      !s.ok()) {
    return done(s);
  }
  auto job = std::make_unique<Job>();
  job->mode = Job::Mode::kScore;
  job->principal = std::move(principal);
  job->session_id = std::move(id);
  job->prompt = std::move(tokens);
  job->on_score = done;
  job->gone = std::move(gone);
  if (auto s = Enqueue(std::move(job)); !s.ok()) done(s);
}

bool Engine::draining() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return draining_;
}

int64_t Engine::inflight() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return inflight_;
}

void Engine::Drain(std::chrono::milliseconds grace) {
  std::unique_lock<std::mutex> lock(mutex_);
  draining_ = true;
  idle_.wait_for(lock, grace, [&] { return inflight_ == 0; });
  lock.unlock();
  std::promise<void> done;
  Post([&] {
    // UNAVAILABLE, which clients and load balancers retry elsewhere.
    for (auto& active : active_) {
      if (active->phase != Active::Phase::kDone) {
        Finish(*active, FinishReason::kCancelled,
               absl::UnavailableError("the server is draining (shutting down)"));
      }
    }
    active_.clear();
    FlushWrites();  // the turns' own snapshots land before the final ones
    if (!options_.snapshot_dir.empty()) {
      int written = 0;
      // A chat's own session dies with its stream, which the drain ends.
      std::vector<Session*> with_streams;
      for (auto& [id, session] : sessions_) {
        if (session->with_stream) with_streams.push_back(session.get());
      }
      for (Session* session : with_streams) RemoveSession(session);
      for (auto& [id, session] : sessions_) {
        if (session->ephemeral) continue;
        if (session->tier == Tier::kDisk) {  // on disk, unless the disk refused it
          std::lock_guard<std::mutex> lock(writer_mutex_);
          if (unwritable_.count(id) == 0) continue;
        } else if (HeldFileState(*session) != FileState::kUnknown) {
          continue;  // its file holds it, or another replica's newer turn (kept)
        }
        if (auto s = WriteToDisk(*session); !s.ok()) {
          std::fprintf(stderr, "fwp-server: session %s not saved: %s\n", id.c_str(),
                       std::string(s.message()).c_str());
        } else {
          std::lock_guard<std::mutex> lock(writer_mutex_);
          unwritable_.erase(id);
          ++written;
        }
      }
      std::fprintf(stderr, "fwp-server: %d sessions written to %s\n", written,
                   options_.snapshot_dir.c_str());
    }
    done.set_value();
  });
  done.get_future().wait();
}

// ---- Sessions (engine thread) ----------------------------------------------

std::string Engine::SnapshotPath(const std::string& id) const {
  return absl::StrCat(options_.snapshot_dir, "/", id, kSnapshotSuffix);
}

absl::StatusOr<Engine::Session*> Engine::Lookup(const std::string& principal,
                                                const std::string& id) {
  if (!ValidSessionId(id)) {
    return absl::InvalidArgumentError(
        absl::StrCat("session_id must be 32 lowercase hex digits, got \"", id, "\""));
  }
  Session* session = nullptr;
  if (auto it = sessions_.find(id); it != sessions_.end()) {
    session = it->second.get();
    if (session->file_missing && session->tier == Tier::kDisk && !session->busy) {
      // Its file was deleted (by another replica): this record goes too, and
      // a file written since is read afresh.
      RemoveSession(session, /*remove_file=*/false);
      session = nullptr;
    } else {
      FWP_RETURN_IF_ERROR(CheckHeldCopy(session));  // may drop a stale copy
    }
  }
  if (session == nullptr && !options_.snapshot_dir.empty() && FileExists(SnapshotPath(id))) {
    // Written by an earlier run of this server or by another replica.
    FWP_ASSIGN_OR_RETURN(SessionSnapshot snapshot, ReadSession(id, nullptr));
    auto owned = std::make_unique<Session>();
    owned->id = id;
    owned->owner = snapshot.owner;
    owned->tier = Tier::kDisk;
    owned->position = snapshot.position;
    owned->pending = std::move(snapshot.pending);
    owned->last_used = ++tick_;
    session = owned.get();
    sessions_.emplace(id, std::move(owned));
  }
  if (session == nullptr || session->ephemeral) {
    return absl::NotFoundError(absl::StrCat("session ", id, " not found"));
  }
  // An empty principal is a server without --auth_tokens_file: no owners.
  if (!principal.empty() && session->owner != principal) {
    return absl::PermissionDeniedError(
        absl::StrCat("session ", id, " belongs to another token"));
  }
  session->active = Clock::now();
  // Its snapshot file, when it has one, is marked as used (a quarter-TTL at
  // most apart), so that a replica sharing the directory that does not hold
  // the session does not take the file for abandoned (--session_ttl_s).
  if (options_.session_ttl_s > 0 && !options_.snapshot_dir.empty() &&
      session->active - session->file_touched >
          std::chrono::duration<double>(options_.session_ttl_s / 4)) {
    session->file_touched = session->active;
    bool pending;
    {
      std::lock_guard<std::mutex> lock(writer_mutex_);
      TakeWrittenFile(*session);
      pending = unwritten_.count(id) > 0;
    }
    if (!pending) {  // (a write on its way sets the time itself)
      const std::string path = SnapshotPath(id);
      const bool ours = session->file && StatFile(path) == session->file;
      std::error_code ignored;
      std::filesystem::last_write_time(path, std::filesystem::file_time_type::clock::now(),
                                       ignored);
      // Its ctime moved: the file is still this copy's if it was before (one
      // that another replica replaced stays told apart).
      if (ours) session->file = StatFile(path);
    }
  }
  return session;
}

void Engine::TakeWrittenFile(Session& session) {
  if (auto it = written_files_.find(session.id); it != written_files_.end()) {
    session.file = it->second;  // this replica's own latest write (none: it failed)
    written_files_.erase(it);
  }
}

Engine::FileState Engine::HeldFileState(Session& session) {
  if (!options_.snapshot_every_turn || options_.snapshot_dir.empty()) return FileState::kUnknown;
  {
    std::lock_guard<std::mutex> lock(writer_mutex_);
    TakeWrittenFile(session);
    // A write of this copy still waits: it is the newest there is.
    if (unwritten_.count(session.id) > 0 || unwritable_.count(session.id) > 0) {
      return FileState::kUnknown;
    }
  }
  if (!session.file) return FileState::kUnknown;
  // No file: this copy is kept and written (it may be the only one left, the
  // directory lost; a session deleted on another replica lingers here until
  // its TTL).
  const std::optional<FileId> now = StatFile(SnapshotPath(session.id));
  if (!now) return FileState::kUnknown;
  return now == session.file ? FileState::kCurrent : FileState::kStale;
}

absl::Status Engine::CheckHeldCopy(Session*& session) {
  // A busy session is changing here; a disk-tier one is read from its file
  // when it is used.
  if (session->busy || session->ephemeral || session->tier == Tier::kDisk) {
    return absl::OkStatus();
  }
  if (HeldFileState(*session) != FileState::kStale) return absl::OkStatus();
  // Another replica continued it and wrote its file: this copy is older.
  RemoveSession(session, /*remove_file=*/false);
  session = nullptr;
  ++metrics_->stale_copies;
  return absl::OkStatus();
}

absl::Status Engine::CanAddSession() const {
  if (!options_.snapshot_dir.empty()) {
    // Spills the disk refused wait in memory, outside --host_bytes: once they
    // fill as much again, new sessions are refused until the disk takes them.
    std::lock_guard<std::mutex> lock(writer_mutex_);
    if (static_cast<int64_t>(unwritable_.size()) * state_bytes_ > options_.host_bytes) {
      return absl::ResourceExhaustedError(absl::StrCat(
          unwritable_.size(), " sessions wait in memory for --snapshot_dir, which refuses their "
          "snapshots (fwp_snapshot_write_failures_total; is the disk full?): no new sessions "
          "until it takes them"));
    }
    return absl::OkStatus();
  }
  const int64_t host_capacity = options_.host_bytes / std::max<int64_t>(state_bytes_, 1);
  int64_t live = 0;
  for (const auto& [id, session] : sessions_) live += session->tier != Tier::kDisk;
  if (live >= options_.slots + host_capacity) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the session store is full (", live, " sessions in ", options_.slots,
        " slots and host memory, --host_bytes); delete sessions or run with --snapshot_dir"));
  }
  return absl::OkStatus();
}

absl::StatusOr<Engine::Session*> Engine::NewSession(const std::string& owner, bool ephemeral,
                                                    const std::string& id) {
  FWP_RETURN_IF_ERROR(CanAddSession());
  auto session = std::make_unique<Session>();
  if (!id.empty()) {
    if (sessions_.count(id) > 0 ||
        (!options_.snapshot_dir.empty() && FileExists(SnapshotPath(id)))) {
      return absl::AlreadyExistsError(absl::StrCat("session ", id, " already exists"));
    }
    session->id = id;
  }
  while (session->id.empty() || sessions_.count(session->id) > 0) session->id = NewSessionId();
  session->owner = owner;
  session->ephemeral = ephemeral;
  session->tier = Tier::kHost;  // the empty state, no host block
  session->last_used = ++tick_;
  ++host_sessions_;
  Session* raw = session.get();
  sessions_.emplace(raw->id, std::move(session));
  return raw;
}

absl::StatusOr<Engine::Session*> Engine::CopySession(Session& parent, const std::string& owner,
                                                     bool ephemeral) {
  // The copy is parked in host memory until used: straight from the parent's
  // slot when it has one, else through the parent's host or disk bytes.
  HostStatePool::Block block;
  if (parent.tier == Tier::kDevice) {
    block = host_pool_->Take();
    pool_->CopyToHost(parent.slot, block.get());
  } else {
    std::vector<char> state;
    FWP_RETURN_IF_ERROR(LoadState(parent, &state));
    if (!state.empty()) {
      block = host_pool_->Take();
      std::memcpy(block.get(), state.data(), state_bytes_);
    }
  }
  FWP_ASSIGN_OR_RETURN(Session * copy, NewSession(owner, ephemeral));
  copy->host = std::move(block);
  copy->position = parent.position;
  copy->pending = parent.pending;
  return copy;
}

SessionInfo Engine::Info(const Session& session) const {
  SessionInfo info;
  info.id = session.id;
  info.tokens = session.position + static_cast<int64_t>(session.pending.size());
  info.tier = session.tier;
  info.state_bytes = state_bytes_;
  info.busy = session.busy;
  return info;
}

absl::StatusOr<SessionSnapshot> Engine::ReadSession(const std::string& id,
                                                    const std::string* bytes,
                                                    FileId* file) const {
  auto snapshot = bytes != nullptr
                      ? DecodeSnapshot(*bytes, fingerprint_, state_bytes_, id)
                      : ReadSnapshot(SnapshotPath(id), fingerprint_, state_bytes_, id, file);
  if (snapshot.ok()) {
    // A well-formed file of this model may still hold ids outside the
    // vocabulary (written by hand). Its pending count may pass
    // --max_prompt_tokens: prompts cut off before they were fed add up.
    if (auto s = ValidatePrompt(snapshot->pending, static_cast<int32_t>(vocab_),
                                kMaxSnapshotPending, "pending tokens", /*allow_empty=*/true);
        !s.ok()) {
      snapshot = absl::DataLossError(absl::StrCat(SnapshotPath(id), ": ", s.message()));
    }
  }
  if (snapshot.ok()) return snapshot;
  // Its file gone (deleted, or expired by a replica sharing the directory)
  // is NOT_FOUND, the disk unreadable now UNAVAILABLE; anything else is a
  // file that is not this session's snapshot.
  const absl::StatusCode code = absl::IsNotFound(snapshot.status())      ? absl::StatusCode::kNotFound
                                : absl::IsUnavailable(snapshot.status()) ? absl::StatusCode::kUnavailable
                                                                         : absl::StatusCode::kDataLoss;
  return absl::Status(code, absl::StrCat("session ", id, " cannot be restored: ",
                                         snapshot.status().message()));
}

absl::Status Engine::LoadState(Session& session, std::vector<char>* state) {
  switch (session.tier) {
    case Tier::kDevice:
      state->resize(state_bytes_);
      pool_->CopyToHost(session.slot, state->data());
      return absl::OkStatus();
    case Tier::kHost:
      if (session.host) {
        state->assign(session.host.get(), session.host.get() + state_bytes_);
      } else {
        state->clear();  // the empty state
      }
      return absl::OkStatus();
    case Tier::kDisk: {
      std::shared_ptr<const std::string> unwritten;
      {
        std::lock_guard<std::mutex> lock(writer_mutex_);
        if (auto it = unwritten_.find(session.id); it != unwritten_.end()) {
          unwritten = it->second;
        } else if (auto it = unwritable_.find(session.id); it != unwritable_.end()) {
          unwritten = it->second;
        }
      }
      FileId file;
      auto read = ReadSession(session.id, unwritten.get(), &file);
      if (!read.ok()) {
        session.file_missing = absl::IsNotFound(read.status());
        return read.status();
      }
      SessionSnapshot& snapshot = *read;
      // The state with its own position and pending tokens: another replica
      // sharing the directory may have written the file since this session
      // was looked up (its counters came from the file then).
      if (snapshot.owner != session.owner) {
        return absl::PermissionDeniedError(
            absl::StrCat("session ", session.id, " now belongs to another token"));
      }
      session.position = snapshot.position;
      session.pending = std::move(snapshot.pending);
      *state = std::move(snapshot.state);
      // From the file: that file holds it; from bytes still to be written:
      // no file does yet.
      session.file = unwritten == nullptr ? std::optional<FileId>(file) : std::nullopt;
      session.file_missing = false;
      return absl::OkStatus();
    }
  }
  return absl::InternalError("bad tier");
}

absl::Status Engine::BringBack(Active& a) {
  a.session->evictable = false;
  FWP_RETURN_IF_ERROR(MakeResident(*a.session));
  // Its penalty-table row was its old slot's, which another request may
  // have filled since: the row is filled again from its sampler's counts.
  a.penalty_row = -1;
  return absl::OkStatus();
}

bool Engine::EvictOne() {
  // The least recently used idle session; failing that, one whose stream is
  // paused (it comes back when its client reads).
  Session* victim = nullptr;
  for (bool paused : {false, true}) {
    for (Session* s : slot_owner_) {
      if (s != nullptr && (paused ? s->busy && s->evictable : !s->busy) &&
          (victim == nullptr || s->last_used < victim->last_used)) {
        victim = s;
      }
    }
    if (victim != nullptr) break;
  }
  if (victim == nullptr) return false;
  if (victim->ephemeral && !victim->busy) {  // an idle ephemeral session is finished with
    RemoveSession(victim);
    return true;
  }
  victim->host = host_pool_->Take();
  pool_->CopyToHost(victim->slot, victim->host.get());
  slot_owner_[victim->slot] = nullptr;
  free_slots_.push_back(victim->slot);
  victim->slot = -1;
  victim->tier = Tier::kHost;
  ++host_sessions_;
  ++metrics_->evictions;
  return true;
}

absl::Status Engine::MakeResident(Session& session) {
  session.last_used = ++tick_;
  if (session.tier == Tier::kDevice) return absl::OkStatus();
  if (free_slots_.empty() && !EvictOne()) {
    return absl::ResourceExhaustedError("no free state slot");
  }
  std::vector<char> state;          // from disk
  HostStatePool::Block block;       // from the host tier
  if (session.tier == Tier::kDisk) FWP_RETURN_IF_ERROR(LoadState(session, &state));
  const int32_t slot = free_slots_.back();
  free_slots_.pop_back();
  if (session.tier == Tier::kHost) {
    block = std::move(session.host);
    --host_sessions_;
  } else {
    // The session lives in memory now; a stale file must not come back
    // (with --snapshot_every_turn the file is the last turn's, and stays).
    DropSnapshot(session.id, /*remove_file=*/!options_.snapshot_every_turn);
  }
  const char* bytes = block ? block.get() : state.empty() ? nullptr : state.data();
  if (bytes == nullptr) {
    pool_->Reset(slot);
  } else {
    pool_->CopyFromHost(slot, bytes, session.position);
    // A copy from page-locked memory runs asynchronously: the block goes
    // back to the pool (and may be written again) only once it is done.
    if (block) model_.backend().Synchronize();
    ++metrics_->restores;
  }
  session.tier = Tier::kDevice;
  session.slot = slot;
  slot_owner_[slot] = &session;
  return absl::OkStatus();
}

absl::StatusOr<std::string> Engine::EncodeSession(Session& session) {
  SessionSnapshot snapshot;
  FWP_RETURN_IF_ERROR(LoadState(session, &snapshot.state));  // (first: it may set the counters)
  snapshot.session_id = session.id;
  snapshot.owner = session.owner;
  snapshot.position = session.position;
  snapshot.pending = session.pending;
  if (snapshot.state.empty()) snapshot.state.assign(state_bytes_, 0);
  return EncodeSnapshot(snapshot, fingerprint_);
}

absl::Status Engine::WriteToDisk(Session& session) {
  FWP_ASSIGN_OR_RETURN(std::string bytes, EncodeSession(session));
  FWP_ASSIGN_OR_RETURN(session.file,
                       WriteSnapshotFile(SnapshotPath(session.id), bytes, UsedTime(session)));
  return absl::OkStatus();
}

std::filesystem::file_time_type Engine::UsedTime(const Session& session) const {
  return std::filesystem::file_time_type::clock::now() -
         std::chrono::duration_cast<std::filesystem::file_time_type::duration>(Clock::now() -
                                                                              session.active);
}

void Engine::WriteThen(Session& session, std::function<void(absl::Status)> then) {
  auto bytes = EncodeSession(session);
  if (!bytes.ok()) {
    std::fprintf(stderr, "fwp-server: cannot write session %s: %s\n", session.id.c_str(),
                 std::string(bytes.status().message()).c_str());
    ++metrics_->snapshot_write_failures;
    return then(bytes.status());
  }
  QueueWrite(session, std::make_shared<const std::string>(std::move(*bytes)), std::move(then));
}

void Engine::QueueWrite(const Session& session, std::shared_ptr<const std::string> bytes,
                        std::function<void(absl::Status)> then) {
  {
    std::lock_guard<std::mutex> lock(writer_mutex_);
    unwritten_[session.id] = bytes;
    unwritable_.erase(session.id);  // superseded
    writes_.push_back({session.id, std::move(bytes), std::move(then), UsedTime(session)});
  }
  writer_wake_.notify_one();
}

void Engine::RetryUnwritable() {
  const auto now = Clock::now();
  if (now < next_write_retry_) return;
  next_write_retry_ = now + kRetryWrites;
  std::unordered_map<std::string, std::shared_ptr<const std::string>> retry;
  {
    std::lock_guard<std::mutex> lock(writer_mutex_);
    retry.swap(unwritable_);
  }
  for (auto& [id, bytes] : retry) {
    // (A session deleted or expired meanwhile took its copy with it.)
    if (auto it = sessions_.find(id); it != sessions_.end()) {
      QueueWrite(*it->second, std::move(bytes), nullptr);
    }
  }
}

void Engine::DropSnapshot(const std::string& id, bool remove_file) {
  SettleWrite(id);
  {
    std::lock_guard<std::mutex> lock(writer_mutex_);
    unwritable_.erase(id);
  }
  if (remove_file) {
    std::error_code ignored;
    std::filesystem::remove(SnapshotPath(id), ignored);
  }
}

void Engine::SettleWrite(const std::string& id) {
  std::unique_lock<std::mutex> lock(writer_mutex_);
  writer_idle_.wait(lock, [&] { return unwritten_.count(id) == 0; });
}

void Engine::WriterLoop() {
  model_.backend().BindThread();
  std::unique_lock<std::mutex> lock(writer_mutex_);
  while (true) {
    writer_wake_.wait(lock, [&] {
      return writer_stop_ || !writes_.empty() || scan_wanted_ || !abandoned_.empty();
    });
    if (!writes_.empty()) {
      WriteNext(lock);
    } else if (writer_stop_) {
      return;  // stopping, nothing left
    } else if (!abandoned_.empty()) {
      std::vector<std::string> ids;
      ids.swap(abandoned_);
      RemoveAbandoned(ids, lock);
    } else {
      scan_wanted_ = false;
      ScanSnapshots(lock);
    }
  }
}

void Engine::WriteNext(std::unique_lock<std::mutex>& lock) {
  PendingWrite write = std::move(writes_.front());
  writes_.pop_front();
  writing_ = true;
  lock.unlock();
  const std::string path = SnapshotPath(write.id);
  const absl::StatusOr<std::optional<FileId>> file =
      WriteSnapshotFile(path, *write.bytes, write.used);
  const absl::Status written = file.status();
  if (!written.ok()) {
    std::fprintf(stderr, "fwp-server: cannot write %s: %s%s\n", path.c_str(),
                 std::string(written.message()).c_str(),
                 write.then ? "" : " (the session stays in memory; written again later)");
    ++metrics_->snapshot_write_failures;
  }
  if (options_.snapshot_every_turn) {  // (for HeldFileState; a failure: none)
    std::lock_guard<std::mutex> relock(writer_mutex_);
    written_files_[write.id] = file.ok() ? *file : std::nullopt;
  }
  if (write.then) write.then(written);
  lock.lock();
  writing_ = false;
  if (auto it = unwritten_.find(write.id); it != unwritten_.end() && it->second == write.bytes) {
    // (A newer write of the same session may still wait.) A spill the disk
    // refused is the session's only copy: it stays in memory.
    if (!written.ok() && !write.then) unwritable_[write.id] = write.bytes;
    unwritten_.erase(it);
  }
  writer_idle_.notify_all();
}

bool Engine::WriteQueued(std::unique_lock<std::mutex>& lock) {
  while (!writes_.empty()) WriteNext(lock);
  return !writer_stop_;
}

// The age past which a snapshot file no session here holds is abandoned
// (see ExpireSessions).
static std::filesystem::file_time_type::duration AbandonedAge(double ttl_s) {
  return std::chrono::duration_cast<std::filesystem::file_time_type::duration>(
      std::chrono::duration<double>(1.25 * ttl_s));
}

void Engine::ScanSnapshots(std::unique_lock<std::mutex>& lock) {
  using FileTime = std::filesystem::file_time_type;
  const auto ttl = AbandonedAge(options_.session_ttl_s);
  const auto abandoned =
      std::max(ttl, std::chrono::duration_cast<FileTime::duration>(kAbandonedWrite));
  constexpr std::string_view kSuffix = kSnapshotSuffix;
  constexpr std::string_view kTemporary = ".tmp.";  // WriteFileAtomically's
  std::vector<std::string> old;
  // Hands `old` to the engine thread (it alone knows which sessions it holds).
  auto hand_over = [&] {
    if (old.empty()) return;
    Post([this, ids = std::move(old)] { RemoveAbandonedSnapshots(ids); });
    old.clear();
  };
  lock.unlock();
  std::error_code error;
  std::filesystem::directory_iterator it(options_.snapshot_dir, error);
  for (int64_t seen = 0; !error && it != std::filesystem::directory_iterator();
       it.increment(error)) {
    if (++seen % 64 == 0) {
      lock.lock();
      const bool go_on = WriteQueued(lock);
      lock.unlock();
      if (!go_on) break;
      if (old.size() >= 256) hand_over();
    }
    const std::string name = it->path().filename().string();
    std::error_code ignored;
    const auto age = FileTime::clock::now() - it->last_write_time(ignored);
    if (ignored) continue;
    if (name.size() > kSuffix.size() && name.ends_with(kSuffix)) {
      if (age > ttl) old.push_back(name.substr(0, name.size() - kSuffix.size()));
    } else if (const size_t at = name.rfind(std::string(kSuffix) + std::string(kTemporary));
               at != std::string::npos && at > 0 && age > abandoned) {
      std::filesystem::remove(it->path(), ignored);
    }
  }
  hand_over();
  lock.lock();
}

void Engine::RemoveAbandonedSnapshots(const std::vector<std::string>& ids) {
  std::vector<std::string> gone;
  for (const std::string& id : ids) {
    if (sessions_.count(id) == 0) gone.push_back(id);  // held here: it expires with its session
  }
  if (gone.empty()) return;
  {
    std::lock_guard<std::mutex> lock(writer_mutex_);
    abandoned_.insert(abandoned_.end(), gone.begin(), gone.end());
  }
  writer_wake_.notify_one();
}

void Engine::RemoveAbandoned(const std::vector<std::string>& ids,
                             std::unique_lock<std::mutex>& lock) {
  const auto ttl = AbandonedAge(options_.session_ttl_s);
  for (size_t i = 0; i < ids.size(); ++i) {
    const std::string& id = ids[i];
    if (i % 64 == 0 && !WriteQueued(lock)) return;
    if (unwritten_.count(id) > 0 || unwritable_.count(id) > 0) continue;
    lock.unlock();
    // Still as old: a replica that asks for it since (this one too: Lookup
    // touches the file) or writes it keeps it.
    const std::string path = SnapshotPath(id);
    std::error_code ignored;
    const auto written = std::filesystem::last_write_time(path, ignored);
    if (!ignored && std::filesystem::file_time_type::clock::now() - written > ttl &&
        std::filesystem::remove(path, ignored)) {
      ++metrics_->expired_sessions;
    }
    lock.lock();
  }
}

void Engine::FlushWrites() {
  std::unique_lock<std::mutex> lock(writer_mutex_);
  writer_idle_.wait(lock, [&] { return writes_.empty() && !writing_; });
}

void Engine::SpillHost() {
  if (options_.snapshot_dir.empty()) return;
  RetryUnwritable();
  while (host_sessions_ * state_bytes_ > options_.host_bytes) {
    Session* victim = nullptr;
    for (auto& [id, s] : sessions_) {
      if (s->tier == Tier::kHost && !s->busy && !s->ephemeral &&
          (victim == nullptr || s->last_used < victim->last_used)) {
        victim = s.get();
      }
    }
    if (victim == nullptr) return;
    // --snapshot_every_turn: its file may hold this copy already (nothing to
    // write), or another replica's newer one (this copy must not overwrite
    // it: it goes, and the file is read when the session is asked for).
    const FileState file = HeldFileState(*victim);
    if (file == FileState::kStale) {
      RemoveSession(victim, /*remove_file=*/false);
      ++metrics_->stale_copies;
      continue;
    }
    if (file == FileState::kUnknown) {
      // Written by the writer thread; the engine does not wait on the disk.
      auto bytes = EncodeSession(*victim);  // host tier: cannot fail
      if (!bytes.ok()) return;
      QueueWrite(*victim, std::make_shared<const std::string>(std::move(*bytes)), nullptr);
    }
    victim->host.reset();
    victim->tier = Tier::kDisk;
    --host_sessions_;
    ++metrics_->spills;
  }
}

void Engine::ExpireSessions() {
  if (options_.session_ttl_s <= 0) return;
  const auto now = Clock::now();
  if (now < next_expiry_) return;
  const auto ttl = std::chrono::duration_cast<Clock::duration>(
      std::chrono::duration<double>(options_.session_ttl_s));
  // A quarter of the TTL between looks (at least 0.1 s, at most a minute).
  next_expiry_ = now + std::clamp<Clock::duration>(ttl / 4, std::chrono::milliseconds(100),
                                                   std::chrono::minutes(1));
  std::vector<Session*> expired;
  for (auto& [id, s] : sessions_) {
    if (!s->busy && !s->ephemeral && now - s->active > ttl) expired.push_back(s.get());
  }
  // A request waiting for a session keeps it (it was asked for).
  for (const auto& a : active_) {
    std::erase_if(expired, [&](Session* s) { return s->id == a->waiting_for_session; });
  }
  // Its file stays: another replica sharing the directory may hold the
  // session and keep it fresh. The scan removes the file once it is a
  // quarter older than the TTL.
  for (Session* s : expired) RemoveSession(s, /*remove_file=*/false);
  metrics_->expired_sessions += expired.size();
  // Snapshots no session here holds (earlier runs', other replicas'), by
  // their files' age: a file is given its session's last use whenever it is
  // written, and touched while a replica holding it is asked for it (Lookup,
  // at most a quarter-TTL apart). So a file older than 1.25 × the TTL is one
  // whose session has not been asked for in the TTL, wherever it is held.
  if (options_.snapshot_dir.empty()) return;
  {
    std::lock_guard<std::mutex> lock(writer_mutex_);
    scan_wanted_ = true;
  }
  writer_wake_.notify_one();
}

void Engine::RemoveSession(Session* session, bool remove_file) {
  if (session->tier == Tier::kDevice) {
    slot_owner_[session->slot] = nullptr;
    free_slots_.push_back(session->slot);
  } else if (session->tier == Tier::kHost) {
    --host_sessions_;
  }
  if (!options_.snapshot_dir.empty()) {
    DropSnapshot(session->id, remove_file);
    std::lock_guard<std::mutex> lock(writer_mutex_);
    written_files_.erase(session->id);
  }
  sessions_.erase(session->id);
}

// ---- Requests (engine thread) ----------------------------------------------

void Engine::StartJob(std::unique_ptr<Job> job) {
  auto active = std::make_unique<Active>();
  absl::StatusOr<Session*> session;
  if (job->mode == Job::Mode::kPrefill) {
    session = NewSession(job->principal, /*ephemeral=*/false, job->session_id);
    active->created_session = true;
  } else if (job->session_id.empty()) {
    const bool ephemeral = job->mode == Job::Mode::kScore ||
                           (job->mode == Job::Mode::kGenerate && !job->keep_session);
    session = NewSession(job->principal, ephemeral);
    if (session.ok()) (*session)->with_stream = job->with_stream;
    active->created_session = true;
  } else {
    session = Lookup(job->principal, job->session_id);
    // An idle session with requests still waiting for it (the one it ran
    // ended since the last step) is theirs first: requests on one session
    // run in the order they came.
    const auto waited_for = [&] {
      return std::any_of(active_.begin(), active_.end(), [&](const auto& a) {
        return a->phase == Active::Phase::kWaiting && a->waiting_for_session == job->session_id;
      });
    };
    if (session.ok() && ((*session)->busy || waited_for()) &&
        (job->mode == Job::Mode::kGenerate || job->mode == Job::Mode::kScore)) {
      // Requests on one session run one after the other (a chat's next turn
      // may arrive before a cancelled reply has let go; a score reads the
      // state a running turn has only half written).
      active->job = std::move(job);
      active->waiting_for_session = active->job->session_id;
      if (active->job->out) active->job->out->SetSessionId(active->waiting_for_session);
      active_.push_back(std::move(active));
      return;
    }
    if (session.ok() && job->mode == Job::Mode::kScore) {
      // Score a copy: the session itself is left as it was.
      session = CopySession(**session, job->principal, /*ephemeral=*/true);
    }
  }
  active->job = std::move(job);
  if (!session.ok()) {
    active->phase = Active::Phase::kWaiting;
    Finish(*active, FinishReason::kNone, session.status());
    return;
  }
  active->session = *session;
  active->session->busy = true;
  active->session->evictable = false;
  // The RPC side learns the session even if the request ends before its
  // first event (to release a chat stream's own session).
  if (active->job->out) active->job->out->SetSessionId(active->session->id);
  active_.push_back(std::move(active));
}

void Engine::Admit(Active& a) {
  Session& session = *a.session;
  const Job& job = *a.job;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    --queued_;
  }
  metrics_->queue_s.Observe(Seconds(Clock::now() - job.arrival));
  // The state changes: its file no longer holds it (until this turn's write).
  {
    std::lock_guard<std::mutex> lock(writer_mutex_);
    written_files_.erase(session.id);  // (an earlier turn's write)
  }
  session.file.reset();
  a.feed = session.pending;
  a.prompt_from = a.feed.size();
  a.feed.insert(a.feed.end(), job.prompt.begin(), job.prompt.end());
  session.pending.clear();
  // Generation feeds everything and samples from the last logits; a prefill
  // or a score leaves the last token pending (its logits are not needed yet).
  a.feed_end = job.mode == Job::Mode::kGenerate ? a.feed.size() : a.feed.size() - 1;
  if (job.mode == Job::Mode::kScore) a.score.tokens.reserve(job.prompt.size());
  if (job.mode == Job::Mode::kGenerate) {
    a.sampler = std::make_unique<TokenSampler>(job.params, a.feed, vocab_);
    const size_t context = std::min<size_t>(a.feed.size(), 8);
    a.text = std::make_unique<TextStream>(
        tokenizer_, absl::MakeConstSpan(a.feed).subspan(a.feed.size() - context),
        job.params.stop);
  }
  a.phase = Active::Phase::kPrefill;
}

void Engine::FeedLogits(Active& a, const float* logits) { FeedPick(a, a.sampler->Sample(logits)); }

void Engine::FeedPick(Active& a, TokenSampler::Pick pick) {
  const Job& job = *a.job;
  const GenerationParams& p = job.params;
  const auto now = Clock::now();
  ++a.generated;
  ++metrics_->generated_tokens;
  ++rate_tokens_;
  Event event;
  event.tokens = {pick.token};
  event.text = a.text->Push(pick.token);
  if (p.logprobs) event.logprobs.push_back({pick.token, pick.logprob});
  event.top_logprobs = std::move(pick.top);
  if (a.generated == 1) {
    a.first_token = now;
    metrics_->ttft_s.Observe(Seconds(now - job.arrival));
    if (!a.session->ephemeral) event.session_id = a.session->id;
  } else {
    metrics_->inter_token_s.Observe(Seconds(now - a.last_token));
  }
  a.last_token = now;
  FinishReason reason = FinishReason::kNone;
  if (std::find(p.stop_token_ids.begin(), p.stop_token_ids.end(), pick.token) !=
      p.stop_token_ids.end()) {
    reason = FinishReason::kStop;
  } else if (pick.token == tokenizer_.eos_id() && !p.ignore_eos) {
    reason = FinishReason::kEos;
  } else if (a.text->stopped()) {
    reason = FinishReason::kStop;
  } else if (a.generated >= p.max_tokens) {
    reason = FinishReason::kLength;
  }
  if (reason == FinishReason::kNone) {
    a.next_token = pick.token;
    a.phase = Active::Phase::kDecode;
    job.out->Push(std::move(event));
    return;
  }
  event.text += a.text->Finish();
  a.session->pending = {pick.token};
  event.finished = true;
  event.reason = reason;
  event.usage.prompt_tokens = static_cast<int32_t>(job.prompt.size());
  event.usage.generated_tokens = a.generated;
  event.usage.time_to_first_token_s = Seconds(a.first_token - job.arrival);
  event.usage.total_time_s = Seconds(now - job.arrival);
  event.usage.session_tokens = a.session->position + 1;
  Finish(a, reason, absl::OkStatus(), &event);
}

void Engine::Finish(Active& a, FinishReason reason, absl::Status status, Event* last) {
  if (a.phase == Active::Phase::kDone) return;
  const bool admitted = a.phase != Active::Phase::kWaiting;
  const bool from_decode = a.phase == Active::Phase::kDecode;
  const bool completed = status.ok() && reason != FinishReason::kCancelled;
  a.phase = Active::Phase::kDone;
  Job& job = *a.job;
  Session* session = a.session;
  // 1. The session's final state: what it has seen but not fed.
  if (session != nullptr && admitted && !completed) {
    if (from_decode) {
      session->pending = {a.next_token};  // sampled and streamed, not yet fed
    } else {
      // Cut off in its prompt: what was not fed stays pending, so the
      // session holds every token it was given.
      session->pending.assign(a.feed.begin() + static_cast<std::ptrdiff_t>(a.fed),
                              a.feed.end());
    }
  }
  if (session != nullptr && job.mode == Job::Mode::kPrefill && completed) {
    session->pending = {a.feed.back()};
  }
  // A session this request made whose id never reached the client goes.
  if (session != nullptr && a.created_session && !completed && a.generated == 0) {
    session->ephemeral = true;
  }
  // 2. The answer, delivered now or, with --snapshot_every_turn, once the
  // session is on disk (a replica killed right after a reply must not lose
  // the turn).
  // `saved`: the turn's snapshot write (OK without one); a turn that could
  // not be saved is answered with an error, not acknowledged.
  std::function<void(absl::Status saved)> answer;
  const auto unsaved = [id = session != nullptr ? session->id : std::string()](
                           const absl::Status& saved) {
    return absl::InternalError(absl::StrCat(
        "the turn ran but session ", id, " could not be saved to --snapshot_dir (",
        saved.message(), "); this replica holds it in memory only"));
  };
  switch (job.mode) {
    case Job::Mode::kGenerate: {
      Event event;
      if (last != nullptr) {
        event = std::move(*last);
      } else {  // failed or cancelled
        event.finished = true;
        event.reason = FinishReason::kCancelled;
        event.status = status;
        event.usage.prompt_tokens = static_cast<int32_t>(job.prompt.size());
        event.usage.generated_tokens = a.generated;
        event.usage.total_time_s = Seconds(Clock::now() - job.arrival);
      }
      answer = [out = job.out, event = std::move(event), unsaved](absl::Status saved) mutable {
        if (!saved.ok()) event.status = unsaved(saved);
        out->Push(std::move(event));
      };
      break;
    }
    case Job::Mode::kPrefill: {
      absl::StatusOr<SessionInfo> result =
          completed ? absl::StatusOr<SessionInfo>(Info(*session))
                    : absl::StatusOr<SessionInfo>(
                          status.ok() ? absl::CancelledError("cancelled") : status);
      if (result.ok()) result->busy = false;
      // A session this request made whose turn could not be saved goes: the
      // client is told the error, not its id.
      std::string made = a.created_session && session != nullptr ? session->id : std::string();
      answer = [this, made = std::move(made), done = job.on_info, result = std::move(result),
                unsaved](absl::Status saved) {
        if (saved.ok() || made.empty()) return done(saved.ok() ? result : unsaved(saved));
        Post([this, made] {
          if (auto it = sessions_.find(made); it != sessions_.end() && !it->second->busy) {
            RemoveSession(it->second.get());
          }
        });
        done(absl::InternalError(absl::StrCat(
            "the session's prompt was fed but it could not be saved to --snapshot_dir (",
            saved.message(), "); it was not kept")));
      };
      break;
    }
    case Job::Mode::kScore: {
      absl::StatusOr<ScoreResult> result =
          completed ? absl::StatusOr<ScoreResult>(std::move(a.score))
                    : absl::StatusOr<ScoreResult>(
                          status.ok() ? absl::CancelledError("cancelled") : status);
      answer = [done = job.on_score, result = std::move(result), unsaved](absl::Status saved) {
        done(saved.ok() ? result : unsaved(saved));
      };
      break;
    }
  }
  // 3. The session released (removed if this request's alone).
  bool deferred = false;
  if (session != nullptr) {
    session->busy = false;
    session->evictable = false;
    session->last_used = ++tick_;
    session->active = Clock::now();
    if (session->ephemeral) {
      RemoveSession(session);
    } else if (options_.snapshot_every_turn && !options_.snapshot_dir.empty() && admitted) {
      WriteThen(*session, std::move(answer));
      deferred = true;
    }
    a.session = nullptr;
  }
  if (!deferred) answer(absl::OkStatus());
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!admitted) --queued_;
    --inflight_;
  }
  idle_.notify_all();
}

// ---- The loop (engine thread) ----------------------------------------------

bool Engine::HasRunnableWork() const {
  int obtainable = -1;  // whether a slot can be had, computed once if needed
  const auto slot_obtainable = [&] {
    if (obtainable < 0) {
      obtainable = !free_slots_.empty();
      for (const Session* s : slot_owner_) {
        if (obtainable) break;
        obtainable = s != nullptr && (!s->busy || s->evictable);  // evictable
      }
    }
    return obtainable == 1;
  };
  for (const auto& a : active_) {
    if (a->phase == Active::Phase::kWaiting) {
      if (a->session == nullptr) continue;  // waits for its session (polled)
      if (a->session->tier == Tier::kDevice || slot_obtainable()) return true;
      continue;
    }
    if (a->paused(options_.stream_buffer)) continue;
    // (A decode whose state left its slot needs one back.)
    if (a->phase != Active::Phase::kDecode || a->session->tier == Tier::kDevice ||
        slot_obtainable()) {
      return true;
    }
  }
  return false;
}

void Engine::Loop() {
  model_.backend().BindThread();
  while (true) {
    std::deque<std::function<void()>> commands;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      if (commands_.empty() && !stop_ && !HasRunnableWork()) {
        if (active_.empty()) {
          // Idle: wake once a second anyway so the gauges (tokens/s) decay.
          wake_.wait_for(lock, std::chrono::seconds(1),
                         [&] { return stop_ || !commands_.empty(); });
        } else {
          // Paused streams, cancellations and waiting requests are polled.
          wake_.wait_for(lock, std::chrono::milliseconds(2));
        }
      }
      if (stop_) return;
      commands.swap(commands_);
    }
    for (auto& command : commands) command();
    if (!active_.empty()) Step();
    SpillHost();  // also after session commands (forks) with nothing running
    ExpireSessions();
    PublishGauges();
  }
}

void Engine::Step() {
  const auto start = Clock::now();
  // 1. Cancelled or timed-out streams free their slots.
  for (auto& a : active_) {
    if (a->phase == Active::Phase::kDone) continue;
    if (a->job->out && a->job->out->cancelled()) {
      Finish(*a, FinishReason::kCancelled, absl::OkStatus());
    } else if (a->job->cancel || (a->job->gone && a->job->gone())) {
      Finish(*a, FinishReason::kCancelled,
             absl::CancelledError(a->job->cancel ? "the session was deleted"
                                                 : "the client cancelled, or its deadline passed"));
    }
  }
  // 2. Admission, first come first served; once a request finds no slot,
  // only requests whose sessions are already resident go ahead of it (they
  // hold slots that no eviction could free, and running them frees them).
  // A decode paused for a while (kLendSlotAfter: not a reader a few events
  // behind) may lend its slot (EvictOne); one whose client reads again
  // takes a slot back before the waiting requests do.
  const auto now = Clock::now();
  bool blocked = false;
  for (auto& a : active_) {
    if (a->session == nullptr || a->phase == Active::Phase::kDone) continue;
    const bool paused = a->phase == Active::Phase::kDecode && a->paused(options_.stream_buffer);
    if (!paused) {
      a->paused_since.reset();
    } else if (!a->paused_since) {
      a->paused_since = now;
    }
    a->session->evictable = paused && now - *a->paused_since >= kLendSlotAfter;
  }
  for (auto& a : active_) {
    if (a->phase != Active::Phase::kDecode || a->paused(options_.stream_buffer) ||
        a->session->tier == Tier::kDevice) {
      continue;
    }
    if (const absl::Status back = BringBack(*a); absl::IsResourceExhausted(back)) {
      blocked = true;  // (first come, first served: it came before the waiting ones)
    } else if (!back.ok()) {
      Finish(*a, FinishReason::kNone, back);
    }
  }
  for (auto& a : active_) {
    if (a->phase != Active::Phase::kWaiting) continue;
    if (!a->waiting_for_session.empty()) {
      auto it = sessions_.find(a->waiting_for_session);
      if (it == sessions_.end() || it->second->ephemeral) {
        Finish(*a, FinishReason::kNone,
               absl::NotFoundError(absl::StrCat("session ", a->waiting_for_session,
                                                " was deleted")));
        continue;
      }
      // Deleted and made again by another principal meanwhile: not theirs.
      if (!a->job->principal.empty() && it->second->owner != a->job->principal) {
        Finish(*a, FinishReason::kNone,
               absl::PermissionDeniedError(absl::StrCat("session ", a->waiting_for_session,
                                                        " belongs to another token")));
        continue;
      }
      if (it->second->busy) continue;  // its turn has not come yet
      a->waiting_for_session.clear();
      if (a->job->mode == Job::Mode::kScore) {  // a copy, as in StartJob
        auto copy = CopySession(*it->second, a->job->principal, /*ephemeral=*/true);
        if (!copy.ok()) {
          Finish(*a, FinishReason::kNone, copy.status());
          continue;
        }
        a->session = *copy;
      } else {
        a->session = it->second.get();
      }
      a->session->busy = true;
      a->session->evictable = false;
    }
    if (blocked && a->session->tier != Tier::kDevice) continue;
    absl::Status resident = MakeResident(*a->session);
    if (absl::IsResourceExhausted(resident)) {  // no slot yet: wait
      blocked = true;
      continue;
    }
    if (!resident.ok()) {
      Finish(*a, FinishReason::kNone, resident);
      continue;
    }
    // What cancelled requests left unfed counts as prompt, so that it stays
    // bounded (it is fed by this request, and kept in snapshots). A session
    // holding more than that (written by a server with a larger limit) can
    // still take a one-token prompt.
    if (const int64_t unfed = static_cast<int64_t>(a->session->pending.size()),
        room = std::max<int64_t>(1, options_.max_prompt_tokens + 1 - unfed);
        unfed > 1 && static_cast<int64_t>(a->job->prompt.size()) > room) {
      Finish(*a, FinishReason::kNone,
             absl::InvalidArgumentError(absl::StrCat(
                 "session ", a->session->id, " holds ", unfed,
                 " tokens that a cancelled request left unfed, which count against "
                 "--max_prompt_tokens (", options_.max_prompt_tokens, "): this prompt has ",
                 a->job->prompt.size(), " tokens, at most ", room, " fit")));
      continue;
    }
    Admit(*a);
  }
  // 3. One fused decode step for every generating session.
  // A request whose paused stream let its state go (EvictOne) takes a slot
  // again first; none that steps now may lose its slot to another's.
  std::vector<Active*> decode;
  std::vector<int32_t> slots, tokens;
  for (auto& a : active_) {
    if (a->phase == Active::Phase::kDecode && !a->paused(options_.stream_buffer)) {
      a->session->evictable = false;
    }
  }
  for (auto& a : active_) {
    if (a->phase == Active::Phase::kDecode && !a->paused(options_.stream_buffer)) {
      if (a->session->tier != Tier::kDevice) {  // (its client read since the admission)
        const absl::Status back = BringBack(*a);
        if (absl::IsResourceExhausted(back)) continue;  // no slot this step
        if (!back.ok()) {
          Finish(*a, FinishReason::kNone, back);
          continue;
        }
      }
      decode.push_back(a.get());
      slots.push_back(a->session->slot);
      tokens.push_back(a->next_token);
    }
  }
  if (!decode.empty()) {
    // Tokens are drawn on the backend, penalties applied there; only
    // requests whose sampler needs the whole row (log-probabilities) get
    // their logits on the host.
    // A penalised request's penalties come from its row of the penalty table
    // (filled once, then a token a step); where the table cannot be had, its
    // whole list is sent with the step.
    std::vector<RowSampling> draws(decode.size());
    std::vector<int32_t> logits_rows, next(decode.size());
    std::vector<LogitPenalty> penalties;
    std::vector<PenaltyRow> table_rows;
    // Whether the request's row of the table is filled and current.
    const auto has_table_row = [&](const Active& a) {
      return a.penalty_row == a.session->slot &&
             a.penalty_generation == penalty_table_->generation();
    };
    for (size_t i = 0; i < decode.size(); ++i) {
      Active& a = *decode[i];
      const auto row = static_cast<int32_t>(i);
      if (a.sampler->needs_logits()) {
        logits_rows.push_back(row);
        continue;
      }
      draws[i] = a.sampler->Draw();
      if (!a.sampler->penalised()) continue;
      const int32_t slot = a.session->slot;
      if (!has_table_row(a) && penalty_table_->Assign(slot, a.sampler->penalties()).ok()) {
        a.penalty_row = slot;
        a.penalty_generation = penalty_table_->generation();
      }
      if (has_table_row(a)) {
        table_rows.push_back(a.sampler->TableRow(row, slot));
      } else {
        a.sampler->AppendPenalties(row, &penalties);
      }
    }
    if (!penalty_table_->Flush().ok()) {  // the table's rows are lost: lists this step
      for (const PenaltyRow& r : table_rows) {
        decode[r.row]->sampler->AppendPenalties(r.row, &penalties);
      }
      table_rows.clear();
    }
    const PenaltyTableRows table{penalty_table_->data(), penalty_table_->rows(), table_rows};
    if (auto s = model_.StepAndSample(*pool_, slots, tokens, draws, next.data(), logits_rows,
                                      logits_.data(), penalties, table);
        !s.ok()) {
      for (Active* a : decode) Finish(*a, FinishReason::kNone, s);
    } else {
      metrics_->batch_size.Observe(static_cast<double>(decode.size()));
      size_t row = 0;
      for (size_t i = 0; i < decode.size(); ++i) {
        Active& a = *decode[i];
        a.session->position = pool_->position(a.session->slot);
        if (row < logits_rows.size() && logits_rows[row] == static_cast<int32_t>(i)) {
          FeedLogits(a, logits_.data() + row++ * vocab_);
        } else {
          TokenSampler::Pick pick = a.sampler->Accept(next[i]);
          if (has_table_row(a)) {
            penalty_table_->Set(a.penalty_row, next[i], a.sampler->TableValue(next[i]));
          }
          FeedPick(a, std::move(pick));  // may finish the request
        }
      }
    }
  }
  // 4. Prompt pieces under the step's token budget. A piece ends at the next
  // multiple of prefill_piece of the session's position, whatever else runs.
  int64_t budget = options_.step_tokens - static_cast<int64_t>(decode.size());
  bool fed_any = false;
  for (auto& ap : active_) {
    Active& a = *ap;
    if (a.phase != Active::Phase::kPrefill || a.paused(options_.stream_buffer)) continue;
    Session& session = *a.session;
    const bool score = a.job->mode == Job::Mode::kScore;
    bool out_of_budget = false;
    absl::Status status;
    while (a.fed < a.feed_end) {
      const int64_t piece = options_.prefill_piece;
      const int64_t n = std::min<int64_t>(static_cast<int64_t>(a.feed_end - a.fed),
                                          piece - session.position % piece);
      if (n > budget && fed_any) {
        out_of_budget = true;
        break;
      }
      const int32_t slot = session.slot;
      status = model_.Prefill(*pool_, {&slot, 1},
                              absl::MakeConstSpan(a.feed).subspan(a.fed, n), score,
                              logits_.data());
      if (!status.ok()) break;
      if (score) {
        // The prompt's tokens only: not what a cancelled request left
        // pending before it (the context they are scored in).
        for (int64_t j = std::max<int64_t>(0, static_cast<int64_t>(a.prompt_from) -
                                                 static_cast<int64_t>(a.fed) - 1);
             j < n; ++j) {
          const int32_t next = a.feed[a.fed + j + 1];
          const float lp = TokenLogprobOf(logits_.data() + j * vocab_, vocab_, next);
          a.score.tokens.push_back({next, lp});
          a.score.logprob += lp;
        }
      }
      session.position = pool_->position(slot);
      a.fed += n;
      budget -= n;
      fed_any = true;
      metrics_->prompt_tokens += n;
    }
    if (!status.ok()) {
      Finish(a, FinishReason::kNone, status);
    } else if (a.fed == a.feed_end) {
      if (a.job->mode == Job::Mode::kGenerate) {
        FeedLogits(a, logits_.data());  // the last piece's last-token logits
      } else {
        Finish(a, FinishReason::kNone, absl::OkStatus());
      }
    }
    if (out_of_budget || budget <= 0) break;
  }
  // 5. Done requests leave; parked sessions beyond host memory go to disk.
  std::erase_if(active_, [](const std::unique_ptr<Active>& a) {
    return a->phase == Active::Phase::kDone;
  });
  ++metrics_->steps;
  metrics_->step_s.Observe(Seconds(Clock::now() - start));
}

void Engine::PublishGauges() {
  // A scrape needs no more than this; counting sessions is O(sessions).
  const auto now = Clock::now();
  if (now - gauges_published_ < std::chrono::milliseconds(100)) return;
  gauges_published_ = now;
  int64_t device = 0, host = 0, disk = 0, running = 0, waiting = 0;
  for (const auto& [id, s] : sessions_) {
    if (s->ephemeral) continue;
    device += s->tier == Tier::kDevice;
    host += s->tier == Tier::kHost;
    disk += s->tier == Tier::kDisk;
  }
  for (const auto& a : active_) {
    waiting += a->phase == Active::Phase::kWaiting;
    running += a->phase != Active::Phase::kWaiting;
  }
  metrics_->sessions_device = device;
  metrics_->sessions_host = host;
  metrics_->sessions_disk = disk;
  metrics_->slots_in_use = options_.slots - static_cast<int64_t>(free_slots_.size());
  metrics_->queued = waiting;
  metrics_->running = running;
  const double elapsed = Seconds(now - rate_start_);
  if (elapsed >= 1.0) {
    metrics_->tokens_per_second = rate_tokens_ / elapsed;
    rate_tokens_ = 0;
    rate_start_ = now;
  }
}

}  // namespace fwp::server
