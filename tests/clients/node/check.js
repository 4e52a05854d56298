'use strict';
// node-postgres through the pgjit gateway.
// Usage: node check.js CONNECTION_STRING TABLE
// TABLE exists with columns (id int primary key, name text) and is empty.
// Prints one JSON object with what it saw; exits 1 (with {"fatal": ...}) on
// anything unexpected. tests/clients/test_node.py checks the JSON and the table.

const { Client, Pool } = require('pg');
const { from: copyFrom, to: copyTo } = require('pg-copy-streams');
const { pipeline } = require('stream/promises');
const { Readable, Writable } = require('stream');

// Every run is bounded in time.
setTimeout(() => {
  process.stdout.write(JSON.stringify({ fatal: 'check.js timed out after 60 s' }) + '\n');
  process.exit(2);
}, 60000).unref();

function withTimeout(promise, ms, what) {
  let timer;
  const t = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms);
  });
  return Promise.race([promise, t]).finally(() => clearTimeout(timer));
}

async function expectError(client, query, values) {
  try {
    await client.query(query, values);
  } catch (e) {
    return { code: e.code, severity: e.severity, message: e.message };
  }
  return null;
}

async function main() {
  const [dsn, table] = process.argv.slice(2);
  if (!dsn || !table || !/^[a-z_][a-z0-9_]*$/.test(table)) {
    throw new Error('usage: node check.js CONNECTION_STRING TABLE');
  }
  const out = {};
  // No query_timeout: node-pg leaves its timer running for COPY queries, which
  // would keep the process alive for that long after the work is done.
  const opts = { connectionString: dsn, connectionTimeoutMillis: 10000 };
  const client = new Client(opts);
  const notices = [];
  client.on('notice', (n) => notices.push({ severity: n.severity, message: n.message, code: n.code }));
  await client.connect();
  try {
    // Parameterised queries and types.
    let r = await client.query('select $1::int + $2::int as sum, $3::text as t', [40, 2, 'hé']);
    out.params = r.rows[0];
    r = await client.query('select current_user as u, current_database() as d');
    out.whoami = r.rows[0];
    r = await client.query(
      "select '{\"a\": [1, 2]}'::jsonb as j, array[1, 2, 3]::int[] as a, 12.50::numeric(5,2) as n, " +
        "'2024-01-02T03:04:05Z'::timestamptz as ts, '\\x00ff'::bytea as b, null::text as nul"
    );
    const t = r.rows[0];
    out.types = { j: t.j, a: t.a, n: t.n, ts: t.ts.toISOString(), b: t.b.toString('hex'), nul: t.nul };
    r = await client.query({ text: 'select generate_series(1, 20000) as i', rowMode: 'array' });
    out.series = { count: r.rowCount, sum: r.rows.reduce((s, x) => s + x[0], 0) };
    r = await client.query("select repeat('n', 2000000) as big");
    out.bigLength = r.rows[0].big.length;

    // A transaction rolled back, then one committed.
    await client.query('BEGIN');
    await client.query(`insert into ${table} (id, name) values ($1, $2)`, [1, 'rolled back']);
    await client.query('ROLLBACK');
    await client.query('BEGIN');
    await client.query(`insert into ${table} (id, name) values ($1, $2)`, [2, 'committed']);
    await client.query('COMMIT');
    r = await client.query(`select id, name from ${table} order by id`);
    out.txn = r.rows;

    // Errors carry the SQLSTATE in err.code; the connection stays usable.
    out.error = await expectError(client, 'select * from pgjit_no_such_table');
    out.syntax = await expectError(client, 'selec 1');
    await client.query('BEGIN');
    out.dup = await expectError(client, `insert into ${table} (id, name) values ($1, $2)`, [2, 'dup']);
    out.aborted = await expectError(client, 'select 1');
    await client.query('ROLLBACK');
    out.afterError = (await client.query('select 1 as one')).rows[0].one;

    // A named prepared statement, parsed once and executed many times.
    const q1 = [];
    for (let i = 0; i < 5; i++) {
      const res = await client.query({ name: 'q1', text: 'select $1::int * 10 as v', values: [i] });
      q1.push(res.rows[0].v);
    }
    out.q1 = q1;
    r = await client.query("select count(*)::int as n from pg_prepared_statements where name = 'q1' and not from_sql");
    out.q1Prepared = r.rows[0].n;

    // Notices.
    await client.query("DO $$ BEGIN RAISE NOTICE 'node notice %', 3; END $$");
    out.notices = notices;

    // COPY in and out with pg-copy-streams.
    const lines = [];
    for (let i = 100; i < 1100; i++) lines.push(`${i}\tcopied ${i} ü\n`);
    const ingest = client.query(copyFrom(`COPY ${table} (id, name) FROM STDIN`));
    await withTimeout(pipeline(Readable.from(lines), ingest), 20000, 'COPY FROM');
    out.copyIn = ingest.rowCount;
    const chunks = [];
    const egress = client.query(copyTo(`COPY (select id, name from ${table} where id >= 100 order by id) TO STDOUT`));
    const sink = new Writable({
      write(chunk, _enc, cb) {
        chunks.push(chunk);
        cb();
      },
    });
    await withTimeout(pipeline(egress, sink), 20000, 'COPY TO');
    const text = Buffer.concat(chunks).toString('utf8');
    const outLines = text.split('\n').filter((l) => l.length > 0);
    out.copyOut = { rows: egress.rowCount, lines: outLines.length, first: outLines[0], last: outLines[outLines.length - 1] };

    // LISTEN / NOTIFY between two sessions through the gateway.
    const listener = new Client(opts);
    await listener.connect();
    try {
      const channel = `${table}_chan`;
      const got = new Promise((resolve) => listener.on('notification', (n) => resolve({ channel: n.channel, payload: n.payload })));
      await listener.query(`LISTEN ${channel}`);
      await client.query('select pg_notify($1, $2)', [channel, 'node payload']);
      out.notification = await withTimeout(got, 5000, 'notification');
    } finally {
      await listener.end();
    }

    // A pool of 5 running 20 queries at once.
    const pool = new Pool({ ...opts, max: 5 });
    try {
      const results = await withTimeout(
        Promise.all(Array.from({ length: 20 }, (_, i) => pool.query('select $1::int * 2 as v, pg_backend_pid() as pid', [i]))),
        20000,
        'pool queries'
      );
      out.pool = {
        values: results.map((x) => x.rows[0].v),
        pids: new Set(results.map((x) => x.rows[0].pid)).size,
      };
    } finally {
      await pool.end();
    }
  } finally {
    await client.end();
  }
  process.stdout.write(JSON.stringify(out) + '\n');
}

main().catch((e) => {
  process.stdout.write(JSON.stringify({ fatal: String((e && e.stack) || e), code: e && e.code }) + '\n');
  process.exit(1);
});
